"""A run's cases on the ranks: first the single-rank references, spread over the ranks and
computed before any strategy of the job has run (a strategy may patch model classes for the
rest of the process), then every case sharded across all ranks. Every rank's outputs are
gathered to rank 0, which the worker streams back to the parent.

A low-precision case's reference comes with its truth (the same weights upcast to fp32,
arrays keyed `truth:<name>`). Every rank keeps each reference's greedy tokens (the
references are all-gathered), and a sharded case's decode is fed them (teacher-forced);
the parent sends the tokens of references it already holds (a relaunch after a crash).

Yields, on every rank: `start` (the case or reference round being worked on, for the
watchdog), `reference` (one case's single-rank output, or why it could not run) and
`result` (every rank's output of one sharded case, and how its later requests compared
with its first); arrays are keyed `<rank>:<name>`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from harness.case import Case
from harness.errors import HarnessError, ModelError, blame
from harness.run.protocol import Message as Header
from harness.run.protocol import Reference, Result, Start, gather_bytes, pack, unpack
from harness.run.rank.one_case import ShardingFailed, run_case, run_truth
from harness.run.rank.solo import solo_world
from harness.status import ReferenceStatus

Message = tuple[Header, dict[str, np.ndarray]]

# A single-rank reference's prefill is timed once: its tok/s only stands beside the sharded
# case's in the verdict table, where a sharded case's every part is timed `repeats` times
# and judged against its history.
REFERENCE_PREFILL_REPEATS = 1


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
            output, timings = run_case(
                reference, None, capture, repeats, prefill_repeats=REFERENCE_PREFILL_REPEATS
            )
            truth = {}
            if case.low_precision:
                forced = run_truth(reference, output.tokens, capture)
                truth = {f"truth:{k}": v for k, v in forced.arrays().items()}
    except (ModelError, HarnessError) as exc:
        status, reason = blame(exc)
        return pack({"status": status, "reason": reason})
    message = {"status": ReferenceStatus.OK, "timings": _timings(timings)}
    return pack(message, {**output.arrays(), **truth})


def _references(todo, group, capture: bool, repeats: int, forced: dict) -> Iterator[Message]:
    size, rank = group.size(), group.rank()
    for start in range(0, len(todo), size):
        batch = todo[start : start + size]
        scale = max(case.watchdog_scale for _, case in batch)
        yield Start("reference", [i for i, _ in batch], scale=scale), {}
        payload = pack({})
        if rank < len(batch):
            payload = _single_rank(batch[rank][1], capture, repeats)
        for r, (message, arrays) in enumerate(_gathered(payload, group)):
            if r < len(batch):
                if "tokens" in arrays:
                    forced[batch[r][1].key()] = arrays["tokens"]
                yield Reference(batch[r][0], **message), arrays


def _sharded(
    case: Case, group, capture: bool, repeats: int, forced: np.ndarray | None = None
) -> tuple[list[dict], dict]:
    """Every rank's part of one sharded case (`rank`, `timings`, how its later requests
    compared with its first: `requests`) and their arrays."""
    output, timings = run_case(case, group, capture, repeats, forced, requests=True)
    ranks, arrays = [], {}
    mine = pack({"timings": _timings(timings), "requests": output.requests}, output.arrays())
    for r, (message, part) in enumerate(_gathered(mine, group)):
        ranks.append({"rank": r, **message})
        arrays.update({f"{r}:{k}": v for k, v in part.items()})
    return ranks, arrays


def _case(index: int, case: Case, against: str | None, group, capture, repeats, forced) -> Message:
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
    ranks, own = _sharded(case, group, capture, repeats, forced)
    return Result(index, ranks, reference_ranks=reference), {**own, **arrays}


def run_on_rank(spec: dict, group) -> Iterator[Message]:
    if spec.get("impl"):
        from harness.models.impl import install

        install(spec["impl"])  # every rank builds those model types from the given files
    capture, repeats = spec["capture"], spec["repeats"]
    cases = [(entry["index"], Case.from_dict(entry["case"])) for entry in spec["cases"]]
    wanted = set(spec.get("references", []))
    forced = {key: np.array(tokens) for key, tokens in spec.get("forced", {}).items()}
    todo = [(i, c) for i, c in cases if i in wanted]
    yield from _references(todo, group, capture, repeats, forced)
    against = spec.get("reference_strategy")
    for index, case in cases:
        yield Start("case", [index], scale=case.watchdog_scale), {}
        try:
            yield _case(index, case, against, group, capture, repeats, forced.get(case.key()))
        except ShardingFailed as exc:  # the ranks are still in step: on to the next case
            yield Result(index, failures=exc.failures), {}
