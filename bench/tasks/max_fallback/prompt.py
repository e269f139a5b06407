# Return the largest of values, or None when values is empty.
def largest(values):
    if values:
        return max(values)
    return