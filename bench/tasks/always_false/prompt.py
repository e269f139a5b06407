# Return False: a pipe can never be seeked.
def seekable():
    return