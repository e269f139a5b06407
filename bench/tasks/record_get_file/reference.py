 self._file
