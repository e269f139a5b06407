def test_runs():
    clean("  x  ")

def test_is_str():
    assert isinstance(clean("  x  "), str)

def test_value():
    assert clean("  x  ") == "x"

def test_newline():
    assert clean("abc\n") == "abc"
