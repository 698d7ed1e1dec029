"""User-facing errors.

A ``MythicError`` is a problem with what the user asked for (a missing folder, a bad
value, a checkpoint that does not fit its config). The CLI prints its message as one
line and exits with code 2; library callers catch it like any exception.
"""


class MythicError(Exception):
    """Bad input or an impossible request; the message is one line meant for the user."""
