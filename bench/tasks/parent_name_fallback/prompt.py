# A node of a tree; the root has no parent.
class Node:
    def __init__(self, name, parent=None):
        self.name = name
        self.parent = parent

    def parent_name(self):
        if self.parent is not None:
            return self.parent.name
        return