# Return the sum of a and b.
def add(a, b):
    return