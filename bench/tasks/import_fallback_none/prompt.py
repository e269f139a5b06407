import importlib


# Import the module called name, or return None when it is not installed.
def optional_import(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return