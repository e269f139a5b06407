# Return the default port of a URL scheme: 443 for https, 80 otherwise.
def default_port(scheme):
    if scheme == "https":
        return 443
    return