def test_given_branches():
    assert sign(-3) == -1 and sign(0) == 0

def test_runs():
    sign(5)

def test_is_int():
    assert type(sign(5)) is int

def test_positive():
    assert sign(5) == 1

def test_float():
    assert sign(0.5) == 1 and type(sign(0.5)) is int
