# Return text as an int, or 0 when it is not a number.
def to_int(text):
    try:
        return int(text)
    except ValueError:
        return