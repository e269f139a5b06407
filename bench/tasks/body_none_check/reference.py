raise ValueError("value is None")
    return value
