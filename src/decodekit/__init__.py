"""decodekit: exact, fast decoding for neural sequence models."""
