# Return the keyword arguments as a dict.
def options(**kwargs):
    return