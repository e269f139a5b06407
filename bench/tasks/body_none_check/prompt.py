# Raise ValueError when value is None; otherwise return value.
def require(value):
    if value is None:
        