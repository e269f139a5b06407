# Collects parts; add() returns the builder so calls can be chained.
class Builder:
    def __init__(self):
        self.parts = []

    def add(self, part):
        self.parts.append(part)
        return