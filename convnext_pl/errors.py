"""Errors a user can cause and fix.

Anything raised as a :class:`UserError` is reported by the command line as one sentence and a non-zero
exit, without a traceback: the message itself must say what is wrong and what to do.
"""


class UserError(Exception):
    """A mistake in the user's input (a path, a name, a config value) rather than a bug in this package."""
