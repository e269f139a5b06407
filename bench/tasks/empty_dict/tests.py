def test_runs():
    default_options()

def test_is_dict():
    assert isinstance(default_options(), dict)

def test_empty():
    assert default_options() == {}
