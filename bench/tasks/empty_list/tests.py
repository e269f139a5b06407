def test_runs():
    default_paths()

def test_is_list():
    assert isinstance(default_paths(), list)

def test_empty():
    assert default_paths() == []

def test_fresh_each_call():
    a = default_paths()
    a.append("x")
    assert default_paths() == []
