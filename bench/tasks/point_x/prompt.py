# A point in the plane.
class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def get_x(self):
        return