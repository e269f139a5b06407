 NotImplemented
