 not self.closed
