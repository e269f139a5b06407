def test_get_name():
    assert Item("apple").get_name() == "apple"

def test_runs():
    str(Item("apple"))

def test_is_str():
    assert isinstance(str(Item("apple")), str)

def test_value():
    assert str(Item("apple")) == "apple"
