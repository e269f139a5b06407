def test_none():
    assert is_missing(None) is True

def test_other_runs():
    is_missing(0)

def test_other_falsy():
    assert not is_missing(0)

def test_other_is_false():
    assert is_missing("") is False
