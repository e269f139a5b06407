def test_put_get():
    c = Cache()
    c.put("a", 1)
    assert c.get("a") == 1

def test_miss_runs():
    Cache().get("zzz")

def test_miss_is_none():
    assert Cache().get("zzz") is None
