 __version__
