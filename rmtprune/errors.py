"""Errors that reach the user as one line and a non-zero exit, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input (config, paths, files): printed as one line, exit code 2."""


class RunFailed(Exception):
    """A run stopped for a reason found while running (a NaN loss): results so far are kept, exit 1."""
