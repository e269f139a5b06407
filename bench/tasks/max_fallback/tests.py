def test_nonempty():
    assert largest([3, 9, 2]) == 9

def test_empty_runs():
    largest([])

def test_empty_is_none():
    assert largest([]) is None
