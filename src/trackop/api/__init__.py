"""The API: typed spec and status, parsing, names, validation, tuning and conditions (pure).

Nothing in this package does I/O; every other layer depends on it.
"""
