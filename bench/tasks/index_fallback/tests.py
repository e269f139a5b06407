def test_found():
    assert index_of(["a", "b"], "b") == 1

def test_absent_runs():
    index_of(["a", "b"], "z")

def test_absent_is_int():
    assert type(index_of(["a", "b"], "z")) is int

def test_absent_is_minus_one():
    assert index_of(["a", "b"], "z") == -1
