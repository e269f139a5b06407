"""``python -m decodekit``: the command line."""

from decodekit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
