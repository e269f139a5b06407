 value
