def test_readable():
    assert PipeReader(0).readable() is True

def test_runs():
    PipeReader(0).seekable()

def test_falsy():
    assert not PipeReader(0).seekable()

def test_is_false():
    assert PipeReader(0).seekable() is False
