__version__ = "2.1.0"


# Return the version string of this module.
def get_version():
    return