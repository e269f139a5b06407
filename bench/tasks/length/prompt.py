# Return the number of elements in data.
def count(data):
    return