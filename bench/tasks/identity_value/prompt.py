# Return value unchanged.
def identity(value):
    return