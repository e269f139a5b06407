def test_python():
    assert language("a.py") == "python"

def test_c():
    assert language("b.c") == "c"

def test_unknown_runs():
    language("README")

def test_unknown_is_none():
    assert language("README") is None
