def test_runs():
    seekable()

def test_is_bool():
    assert isinstance(seekable(), bool)

def test_is_false():
    assert seekable() is False
