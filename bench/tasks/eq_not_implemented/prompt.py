# A version number that compares only with other versions.
class Version:
    def __init__(self, number):
        self.number = number

    def __eq__(self, other):
        if not isinstance(other, Version):
            return