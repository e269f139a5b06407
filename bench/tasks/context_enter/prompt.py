# A resource that must be closed after use.
class Resource:
    def __init__(self, path):
        self.path = path
        self.closed = False

    def close(self):
        self.closed = True

    def __exit__(self, *exc):
        self.close()

    def __enter__(self):
        return