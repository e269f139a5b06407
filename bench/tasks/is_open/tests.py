def test_close():
    c = Connection()
    c.close()
    assert c.closed is True

def test_runs():
    Connection().is_open()

def test_is_bool():
    assert isinstance(Connection().is_open(), bool)

def test_new_is_open():
    assert Connection().is_open() is True

def test_closed():
    c = Connection()
    c.close()
    assert c.is_open() is False
