# A connection that can be closed.
class Connection:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True

    def is_open(self):
        return