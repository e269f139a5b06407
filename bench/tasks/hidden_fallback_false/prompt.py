# Return True if the file name is hidden (starts with a dot).
def is_hidden(name):
    if name.startswith("."):
        return True
    return