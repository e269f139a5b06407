def test_runs():
    add(2, 3)

def test_is_int():
    assert isinstance(add(2, 3), int)

def test_value():
    assert add(2, 3) == 5

def test_strings():
    assert add("ab", "cd") == "abcd"
