def test_equal():
    assert Version(2) == Version(2)

def test_not_equal():
    assert Version(2) != Version(3)

def test_other_type_runs():
    Version(1) == 3

def test_not_implemented():
    assert Version(1).__eq__(3) is NotImplemented
