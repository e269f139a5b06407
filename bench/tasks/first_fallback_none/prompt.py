# Return the first item, or None when items is empty.
def first_or_none(items):
    if items:
        return items[0]
    return