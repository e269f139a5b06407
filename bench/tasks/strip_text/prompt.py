# Return text without leading and trailing whitespace.
def clean(text):
    return