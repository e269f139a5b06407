# A read-only stream over a pipe.
class PipeReader:
    def __init__(self, fd):
        self.fd = fd

    def readable(self):
        return True

    def seekable(self):
        return