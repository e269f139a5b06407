def test_runs():
    try:
        require(None)
    except ValueError:
        pass

def test_raises():
    try:
        require(None)
    except ValueError:
        return
    assert False, "expected ValueError"

def test_passthrough():
    assert require(3) == 3
