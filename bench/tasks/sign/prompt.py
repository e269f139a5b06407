# Return -1, 0 or 1 according to the sign of x.
def sign(x):
    if x < 0:
        return -1
    if x == 0:
        return 0
    return