def test_str_still_works():
    assert str(Record("a.txt")) == "a.txt"

def test_runs():
    Record("a.txt").get_file()

def test_not_none():
    assert Record("a.txt").get_file() is not None

def test_value():
    obj = object()
    assert Record(obj).get_file() is obj
