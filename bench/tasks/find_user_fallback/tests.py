USERS = [{"name": "ann", "id": 1}, {"name": "bob", "id": 2}]

def test_found():
    assert find_user(USERS, "bob")["id"] == 2

def test_absent_runs():
    find_user(USERS, "eve")

def test_absent_is_none():
    assert find_user(USERS, "eve") is None
