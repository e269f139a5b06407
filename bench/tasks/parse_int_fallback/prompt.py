# Return text as an int, or None when it is not a number.
def parse_int(text):
    try:
        return int(text)
    except ValueError:
        return