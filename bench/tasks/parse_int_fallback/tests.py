def test_number():
    assert parse_int("42") == 42

def test_bad_runs():
    parse_int("x")

def test_bad_is_none():
    assert parse_int("x") is None
