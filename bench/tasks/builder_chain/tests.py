def test_runs():
    Builder().add("x")

def test_appends():
    b = Builder()
    b.add("x")
    assert b.parts == ["x"]

def test_not_none():
    assert Builder().add("x") is not None

def test_chain():
    b = Builder()
    assert b.add("x") is b
    b.add("y").add("z")
    assert b.parts == ["x", "y", "z"]
