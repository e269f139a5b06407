def test_false_words():
    assert parse_bool("no") is False and parse_bool("FALSE") is False

def test_other_runs():
    parse_bool("yes")

def test_other_truthy():
    assert parse_bool("yes")

def test_other_is_true():
    assert parse_bool("1") is True
