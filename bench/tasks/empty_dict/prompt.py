# Return a new, empty dict of options.
def default_options():
    return