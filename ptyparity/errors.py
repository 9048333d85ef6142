"""The one exception type for user mistakes.

Anything a user can cause (a malformed NPZ, an unknown run id, a corrupt bundle)
raises :class:`PtyparityError` with a one-line message that names the problem and
the fix. The CLI prints that line and exits with code 2; programming errors keep
their traceback.
"""


class PtyparityError(ValueError):
    """A user-facing error: one line naming the problem and how to fix it."""
