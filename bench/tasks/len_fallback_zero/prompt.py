# Return len(items), or 0 when items is None.
def safe_len(items):
    if items is not None:
        return len(items)
    return