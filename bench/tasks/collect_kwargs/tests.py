def test_runs():
    options(a=1)

def test_is_dict():
    assert isinstance(options(a=1), dict)

def test_value():
    assert options(a=1, b=2) == {"a": 1, "b": 2}
