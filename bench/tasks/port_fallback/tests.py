def test_https():
    assert default_port("https") == 443

def test_http_runs():
    default_port("http")

def test_http_is_int():
    assert type(default_port("http")) is int

def test_http_is_80():
    assert default_port("http") == 80
