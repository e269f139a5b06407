 self._name
