class Record:
    def __init__(self, file):
        self._file = file

    def __str__(self):
        return str(self._file)

    def get_file(self):
        return