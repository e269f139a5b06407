# Return True if value is None.
def is_missing(value):
    if value is None:
        return True
    return