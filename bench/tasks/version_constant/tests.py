def test_runs():
    get_version()

def test_is_str():
    assert isinstance(get_version(), str)

def test_value():
    assert get_version() == "2.1.0"
