# Return the index of target in items, or -1 when it is absent.
def index_of(items, target):
    for i, item in enumerate(items):
        if item == target:
            return i
    return