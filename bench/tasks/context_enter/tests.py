def test_close():
    r = Resource("x")
    r.close()
    assert r.closed

def test_runs():
    with Resource("x"):
        pass

def test_not_none():
    with Resource("x") as r:
        assert r is not None

def test_is_resource():
    with Resource("x") as r:
        assert isinstance(r, Resource)

def test_same_object():
    res = Resource("x")
    with res as r:
        assert r is res
