# Return True if value is None.
def is_missing(value):
    return