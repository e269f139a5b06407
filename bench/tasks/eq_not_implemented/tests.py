def test_runs():
    Version(1) == 3

def test_other_type():
    assert Version(1).__eq__(3) is NotImplemented

def test_same_number():
    assert Version(2) == Version(2)

def test_different_number():
    assert Version(2) != Version(3)
