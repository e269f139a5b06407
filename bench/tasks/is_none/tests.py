def test_runs():
    is_missing(None)

def test_none_is_missing():
    assert is_missing(None)

def test_zero_is_not_missing():
    assert not is_missing(0)

def test_bools():
    assert is_missing(None) is True and is_missing("") is False
