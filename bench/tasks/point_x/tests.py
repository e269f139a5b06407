def test_runs():
    Point(1, 2).get_x()

def test_not_none():
    assert Point(1, 2).get_x() is not None

def test_value():
    assert Point(1, 2).get_x() == 1

def test_other():
    assert Point(-3, 0).get_x() == -3
