def test_runs():
    to_string(42)

def test_is_str():
    assert isinstance(to_string(42), str)

def test_value():
    assert to_string(42) == "42"

def test_none():
    assert to_string(None) == "None"
