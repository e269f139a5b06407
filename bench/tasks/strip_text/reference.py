 text.strip()
