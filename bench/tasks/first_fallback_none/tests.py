def test_nonempty():
    assert first_or_none([5, 6]) == 5

def test_empty_runs():
    first_or_none([])

def test_empty_is_none():
    assert first_or_none([]) is None
