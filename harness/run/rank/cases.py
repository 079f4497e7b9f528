"""A run's cases on the ranks: first the single-rank references, spread over the ranks and
computed before any strategy of the job has run (a strategy may patch model classes for the
rest of the process), then every case sharded across all ranks. Every rank's outputs are
gathered to rank 0, which the worker streams back to the parent.

Yields, on every rank: `start` (the case or reference round being worked on, for the
watchdog), `reference` (one case's single-rank output, or why it could not run) and
`result` (every rank's output of one sharded case); arrays are keyed `<rank>:<name>`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from harness.case import Case
from harness.errors import HarnessError, ModelError, blame
from harness.run.protocol import Message as Header
from harness.run.protocol import Reference, Result, Start, gather_bytes, pack, unpack
from harness.run.rank.one_case import ShardingFailed, run_case
from harness.run.rank.solo import solo_world

Message = tuple[Header, dict[str, np.ndarray]]


def _timings(timings) -> dict | None:
    return timings.to_dict() if timings is not None else None


def _gathered(payload: bytes, group) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    for part in gather_bytes(payload, group):
        yield unpack(part)


def _single_rank(case: Case, capture: bool, repeats: int) -> bytes:
    """A case's single-rank reference, or why it could not run, as a gatherable payload."""
    reference = Case.from_dict({**case.to_dict(), "strategy": "none"})
    try:
        with solo_world():
            output, timings = run_case(reference, None, capture, repeats)
    except (ModelError, HarnessError) as exc:
        status, reason = blame(exc)
        return pack({"status": status, "reason": reason})
    return pack({"status": "ok", "timings": _timings(timings)}, output.arrays())


def _references(todo, group, capture: bool, repeats: int) -> Iterator[Message]:
    size, rank = group.size(), group.rank()
    for start in range(0, len(todo), size):
        batch = todo[start : start + size]
        yield Start("reference", [i for i, _ in batch]), {}
        payload = pack({})
        if rank < len(batch):
            payload = _single_rank(batch[rank][1], capture, repeats)
        for r, (message, arrays) in enumerate(_gathered(payload, group)):
            if r < len(batch):
                yield Reference(batch[r][0], **message), arrays


def _sharded(case: Case, group, capture: bool, repeats: int) -> tuple[list[dict], dict]:
    """Every rank's part of one sharded case (`rank`, `timings`) and their arrays."""
    output, timings = run_case(case, group, capture, repeats)
    ranks, arrays = [], {}
    for r, (message, part) in enumerate(
        _gathered(pack({"timings": _timings(timings)}, output.arrays()), group)
    ):
        ranks.append({"rank": r, **message})
        arrays.update({f"{r}:{k}": v for k, v in part.items()})
    return ranks, arrays


def _case(index: int, case: Case, against: str | None, group, capture, repeats) -> Message:
    reference: list[dict] | None = None
    arrays: dict[str, np.ndarray] = {}
    if against:
        # Held against another strategy on the same ranks (a model no host fits whole),
        # run first: the case's own strategy may patch classes for the rest of the job.
        other = Case.from_dict({**case.to_dict(), "strategy": against})
        try:
            reference, ref_arrays = _sharded(other, group, capture, repeats)
        except ShardingFailed as exc:
            for failure in exc.failures:
                failure["reason"] = f"(reference {against}) {failure['reason']}"
            raise
        arrays.update({f"ref{k}": v for k, v in ref_arrays.items()})
    ranks, own = _sharded(case, group, capture, repeats)
    return Result(index, ranks, reference_ranks=reference), {**own, **arrays}


def run_on_rank(spec: dict, group) -> Iterator[Message]:
    if spec.get("impl"):
        from harness.models.impl import install

        install(spec["impl"])  # every rank builds those model types from the given files
    capture, repeats = spec["capture"], spec["repeats"]
    cases = [(entry["index"], Case.from_dict(entry["case"])) for entry in spec["cases"]]
    wanted = set(spec.get("references", []))
    yield from _references([(i, c) for i, c in cases if i in wanted], group, capture, repeats)
    against = spec.get("reference_strategy")
    for index, case in cases:
        yield Start("case", [index]), {}
        try:
            yield _case(index, case, against, group, capture, repeats)
        except ShardingFailed as exc:  # the ranks are still in step: on to the next case
            yield Result(index, failures=exc.failures), {}
