"""Who is to blame: the user or the setup (HarnessError), the code under test (ModelError),
or, for anything else, the harness itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from harness.status import CaseStatus


class HarnessError(Exception):
    """A problem the user can fix: the CLI prints its message as one line and exits 2."""


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`: how a foreign exception enters a one-line error."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class ModelError(Exception):
    """An exception raised inside the code under test (an mlx-lm model, its loader, a
    sharding strategy): the case's `crash`. Anything else a rank raises that is not a
    HarnessError is a bug of the harness and is reported as one."""

    def __init__(self, original: BaseException):
        super().__init__(describe(original))
        self.original = original


class HarnessBug(Exception):
    """An exception raised by the harness's own code running inside the code under test
    (a capture tap on a module): a bug of the harness, never the model's crash."""


@contextmanager
def model_code() -> Iterator[None]:
    """Mark a span that runs the code under test: what it raises is the model's."""
    try:
        yield
    except (HarnessError, ModelError, HarnessBug):
        raise
    except Exception as exc:
        raise ModelError(exc) from exc


@contextmanager
def harness_code() -> Iterator[None]:
    """Mark the harness's own code inside a `model_code` span: what it raises is the
    harness's."""
    try:
        yield
    except HarnessBug:
        raise
    except Exception as exc:
        raise HarnessBug(describe(exc)) from exc


INTERNAL = "harness internal error"


def blame(exc: BaseException) -> tuple[CaseStatus, str]:
    """(status, reason) of an exception raised while running a case: the model's `crash`,
    the setup's or user's `error`, or an `error` that is a bug of the harness."""
    if isinstance(exc, ModelError):
        return CaseStatus.CRASH, f"raised {exc}"
    if isinstance(exc, HarnessError):
        return CaseStatus.ERROR, str(exc)
    return CaseStatus.ERROR, f"{INTERNAL}: {describe(exc)}"
