# Return table[key], or None when key is not in table.
def find(table, key):
    if key in table:
        return table[key]
    return