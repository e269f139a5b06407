# Return value converted to a string.
def to_string(value):
    return