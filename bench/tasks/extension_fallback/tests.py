def test_with_dot():
    assert extension("a.tar.gz") == "gz"

def test_no_dot_runs():
    extension("Makefile")

def test_no_dot_is_str():
    assert isinstance(extension("Makefile"), str)

def test_no_dot_empty():
    assert extension("Makefile") == ""
