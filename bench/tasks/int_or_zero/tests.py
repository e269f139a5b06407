def test_number():
    assert to_int("12") == 12

def test_bad_runs():
    to_int("x")

def test_bad_is_int():
    assert type(to_int("x")) is int

def test_bad_is_zero():
    assert to_int("x") == 0
