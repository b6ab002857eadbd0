"""Errors the harness reports to a user as one line, without a traceback."""


class HarnessError(Exception):
    """A mistake in what the user asked for, or an environment problem, stated in one line."""


class StackError(HarnessError):
    """The stack under test failed to start, crashed, or broke the contract."""
