def test_runs():
    identity(3)

def test_not_none():
    assert identity(3) is not None

def test_int():
    assert identity(3) == 3

def test_same_object():
    obj = object()
    assert identity(obj) is obj
