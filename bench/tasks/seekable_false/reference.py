 False
