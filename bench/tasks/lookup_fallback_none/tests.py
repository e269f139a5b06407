TABLE = {"a": 1, "b": 2}

def test_present():
    assert find(TABLE, "b") == 2

def test_missing_runs():
    find(TABLE, "zzz")

def test_missing_is_none():
    assert find(TABLE, "zzz") is None
