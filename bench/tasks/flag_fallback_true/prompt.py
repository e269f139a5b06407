# Parse a yes/no setting: "0", "no" and "false" are False, anything else is True.
def parse_bool(text):
    if text.lower() in ("0", "no", "false"):
        return False
    return