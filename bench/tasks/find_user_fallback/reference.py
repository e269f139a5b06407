 None
