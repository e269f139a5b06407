def test_present():
    assert optional_import("json").dumps([1]) == "[1]"

def test_missing_runs():
    optional_import("no_such_module_xyz")

def test_missing_is_none():
    assert optional_import("no_such_module_xyz") is None
