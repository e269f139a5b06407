# Return the extension of a file name without the dot, or an empty string when it has none.
def extension(name):
    if "." in name:
        return name.rsplit(".", 1)[1]
    return