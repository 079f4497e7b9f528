"""The one exception type for user mistakes and environment problems."""


class HarnessError(Exception):
    """A problem the user can fix: the CLI prints its message as one line and exits 2."""
