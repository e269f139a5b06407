# Return True if any word of words starts with prefix.
def any_starts_with(words, prefix):
    for word in words:
        if word.startswith(prefix):
            return True
    return