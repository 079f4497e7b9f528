"""One rank of `harness props --ranks N`, the `props` job of `harness.run.rank.worker`.

Every rank runs every property with the real group; hypothesis is derandomized, so all
ranks draw the same examples (checked per example). Rank 0 streams a message when a
property starts and one when it ends, so a crash or hang still leaves the results so far.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

from harness.props.numeric import gather
from harness.props.registry import PROPERTIES
from harness.props.run import run_property
from harness.run import protocol


def example_digest(example: Any) -> np.ndarray:
    """A fingerprint of a drawn example, to check that every rank drew the same one."""
    return np.frombuffer(hashlib.sha256(repr(example).encode()).digest()[:8], dtype=np.int32)


def same_example_everywhere(group: Any) -> Any:
    """An executor for `run_property` on the real group: check that every rank drew the
    same example, then run the check as this rank."""

    def execute(check: Any, example: Any) -> None:
        digests = gather(mx.array(example_digest(example)), group)
        if any(not np.array_equal(d, digests[0]) for d in digests):
            raise AssertionError("ranks drew different examples: hypothesis is not in lockstep")
        check(example, group)

    return execute


def run_on_rank(spec: dict, group) -> Iterator[tuple[protocol.Message, dict]]:
    """Every property with the real group (the `props` job kind of `harness.run.rank.worker`):
    a `start` message before each, then its `property` result, the same on every rank."""
    execute = same_example_everywhere(group)
    for prop in PROPERTIES:
        yield protocol.Start("property", name=prop.name), {}
        result = run_property(prop, spec["max_examples"], st.just(group.size()), execute)
        # every rank must reach the same verdict; a split verdict is a finding in itself
        verdicts = gather(mx.array([int(result.passed)], dtype=mx.int32), group)
        if len({int(v[0]) for v in verdicts}) > 1:
            split = ", ".join(
                f"rank {r}: {'pass' if v[0] else 'fail'}" for r, v in enumerate(verdicts)
            )
            result.passed = False
            result.detail = f"ranks disagree ({split}); rank 0: {result.detail or 'passed'}"
        yield protocol.Property(asdict(result)), {}
