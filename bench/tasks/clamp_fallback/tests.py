def test_low_and_high():
    assert clamp(-5, 0, 10) == 0 and clamp(50, 0, 10) == 10

def test_inside_runs():
    clamp(5, 0, 10)

def test_inside_not_none():
    assert clamp(5, 0, 10) is not None

def test_inside_value():
    assert clamp(5, 0, 10) == 5
