"""The one exception type for user mistakes and environment problems."""


class HarnessError(Exception):
    """A problem the user can fix: the CLI prints its message as one line and exits 2."""


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`: how a foreign exception enters a one-line error."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
