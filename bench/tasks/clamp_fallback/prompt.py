# Return x limited to the range [low, high].
def clamp(x, low, high):
    if x < low:
        return low
    if x > high:
        return high
    return