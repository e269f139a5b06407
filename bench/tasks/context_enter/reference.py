 self
