 len(data)
