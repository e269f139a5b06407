 len(self._items)
