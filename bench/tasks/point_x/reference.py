 self.x
