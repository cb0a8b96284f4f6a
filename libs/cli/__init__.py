"""The `keel` command: run the system, look at it, and control it."""
