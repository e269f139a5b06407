def test_push():
    s = Stack()
    s.push(1)
    assert s._items == [1]

def test_runs():
    len(Stack())

def test_empty():
    assert len(Stack()) == 0

def test_after_push():
    s = Stack()
    s.push(1)
    s.push(2)
    assert len(s) == 2
