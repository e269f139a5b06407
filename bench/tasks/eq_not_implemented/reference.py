 NotImplemented
        return self.number == other.number
