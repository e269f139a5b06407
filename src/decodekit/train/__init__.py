"""Build the embedded models: ``python -m decodekit.train`` (see ``__main__``).

Never imported by the decoding engine; CI does not train.
"""
