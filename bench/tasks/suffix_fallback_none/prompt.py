# Return the language of a source file from its suffix, or None when unknown.
def language(path):
    if path.endswith(".py"):
        return "python"
    if path.endswith(".c"):
        return "c"
    return