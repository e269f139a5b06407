def test_child():
    root = Node("root")
    assert Node("leaf", root).parent_name() == "root"

def test_root_runs():
    Node("root").parent_name()

def test_root_is_none():
    assert Node("root").parent_name() is None
