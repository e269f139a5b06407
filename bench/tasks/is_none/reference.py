 value is None
