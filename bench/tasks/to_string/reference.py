 str(value)
