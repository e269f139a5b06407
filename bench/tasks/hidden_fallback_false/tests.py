def test_hidden():
    assert is_hidden(".git") is True

def test_visible_runs():
    is_hidden("setup.py")

def test_visible_falsy():
    assert not is_hidden("setup.py")

def test_visible_is_false():
    assert is_hidden("setup.py") is False
