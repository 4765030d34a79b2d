"""The ``ratchet`` command line: ``cli.main`` holds the app, one module per command group."""
