def test_found():
    assert any_starts_with(["apple", "banana"], "ba") is True

def test_absent_runs():
    any_starts_with(["apple"], "z")

def test_absent_falsy():
    assert not any_starts_with(["apple"], "z")

def test_absent_is_false():
    assert any_starts_with([], "z") is False
