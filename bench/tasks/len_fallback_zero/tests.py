def test_list():
    assert safe_len([1, 2, 3]) == 3

def test_none_runs():
    safe_len(None)

def test_none_is_int():
    assert type(safe_len(None)) is int

def test_none_is_zero():
    assert safe_len(None) == 0
