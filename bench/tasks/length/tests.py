def test_runs():
    count([1, 2, 3])

def test_is_int():
    assert isinstance(count([1, 2, 3]), int)

def test_value():
    assert count([1, 2, 3]) == 3

def test_str_and_empty():
    assert count("abcd") == 4 and count([]) == 0
