# Return a new, empty list of search paths.
def default_paths():
    return