"""The one rank in this process (one local rank under this interpreter: no launch): a job
run here as a launched rank runs it, its messages yielded as the parent reads a launch's.
An exception becomes the rank's `Error` and ends the stream, as a rank's exit would."""

from __future__ import annotations

import traceback
from collections.abc import Iterator

from harness.errors import blame
from harness.run.protocol import End, Error, Message, Start
from harness.run.rank.worker import TRACEBACK_CHARS, resolve_job


def messages(spec: dict) -> Iterator[tuple[Message, dict]]:
    import mlx.core as mx

    current = Start("")
    try:
        for message, arrays in resolve_job(spec["kind"])(spec, mx.distributed.init()):
            if isinstance(message, Start):
                current = message
            yield message, arrays
    except Exception as exc:
        status, reason = blame(exc)
        detail = "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]
        yield Error(0, status, reason, current.indices, current.phase or None, detail), {}
        return
    yield End(), {}
