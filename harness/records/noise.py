"""When is a throughput drop real? A rule over raw samples, shared by every timing source
(`harness run`'s per-case model-call samples today, bench trials later): give it, per
case, the baseline's and the current run's tok/s samples.

A case regressed when, with at least `MIN_SAMPLES` samples on each side:
1. its median is below `RATIO` (0.8) times the baseline's, after dividing out the drift of
   the whole comparison (the median ratio over all cases);
2. its samples do not overlap the baseline's (every one slower, after that division);
3. its log ratio lies more than `Z` (4) robust standard deviations (1.4826 x the median
   absolute deviation of all cases' log ratios, at least `MIN_SPREAD`) below the drift.

Why not the plain "0.8x and no overlap" or a Mann-Whitney test per case: both assume the
samples of one case are independent draws of the same machine state. Measured here (two
cores shared with other jobs, runs of the smoke suite from one build, 5 samples a case)
samples come in load regimes lasting longer than a case: within a case they agree, between
runs the same case moved from 0.22x to 6.8x, so the per-case rule flagged 4 of 6
same-build pairs. A 3-sd bound still flagged one of those six; 4 sd flagged none of 21.
The price on such a machine is sensitivity: one case made 2x slower was flagged in 6 of 75
trials, 10x in 61 of 75, 50x in all; a steadier machine has a smaller spread and flags less.
What varies between runs is the machine, and the other cases of the same comparison measure
it: a drop shared by every case is drift (reported, not flagged: a slower or busier machine
cannot be told from a uniform slowdown, which `harness bench` on a quiet machine can), and a
case is flagged only when it fell well outside the spread of its neighbours. With fewer than
`MIN_CASES` cases there is no such estimate, so nothing is flagged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable
from dataclasses import dataclass

RATIO = 0.8
MIN_SAMPLES = 3
MIN_CASES = 4
Z = 4.0
MIN_SPREAD = 0.05  # log-ratio spread floor: identical builds on a quiet machine still move ~5%


@dataclass
class Verdict:
    regressed: bool
    ratio: float | None  # current median / baseline median, before drift
    reason: str  # why it is or is not a regression, for the report


@dataclass
class Drift:
    ratio: float  # the comparison's median ratio: how much faster or slower everything ran
    spread: float  # robust standard deviation of the cases' log ratios
    cases: int


def rates(tok_s: float | None, seconds: list[float] | None) -> list[float]:
    """Per-sample tok/s from the seconds each timed call took; `tok_s` is the throughput of
    the median call, which fixes the tokens per call without knowing the prompts."""
    if not tok_s or not seconds or min(seconds) <= 0:
        return []
    tokens = tok_s * statistics.median(seconds)
    return [tokens / s for s in seconds]


def _ratio(baseline: list[float], current: list[float]) -> float:
    return statistics.median(current) / statistics.median(baseline)


def drift(pairs: dict[Hashable, tuple[list[float], list[float]]]) -> Drift | None:
    """The comparison's drift and spread, None with fewer than MIN_CASES measured cases."""
    logs = [
        math.log(_ratio(base, cur))
        for base, cur in pairs.values()
        if min(len(base), len(cur)) >= MIN_SAMPLES
    ]
    if len(logs) < MIN_CASES:
        return None
    centre = statistics.median(logs)
    mad = statistics.median(abs(x - centre) for x in logs)
    return Drift(math.exp(centre), max(1.4826 * mad, MIN_SPREAD), len(logs))


def regression(baseline: list[float], current: list[float], run: Drift | None) -> Verdict:
    """Whether one case's `current` tok/s samples regressed from `baseline`, within a
    comparison whose drift is `run` (see the module docstring)."""
    if min(len(baseline), len(current)) < MIN_SAMPLES:
        return Verdict(False, None, f"fewer than {MIN_SAMPLES} samples on a side")
    ratio = _ratio(baseline, current)
    if run is None:
        return Verdict(False, ratio, f"fewer than {MIN_CASES} cases to measure the noise")
    relative = ratio / run.ratio
    z = math.log(relative) / run.spread
    corrected = [x / run.ratio for x in current]
    said = f"median at {ratio:.2f}x, {relative:.2f}x after the run's drift of {run.ratio:.2f}x"
    if relative >= RATIO or z >= -Z:
        return Verdict(False, ratio, f"{said}: within noise")
    if max(corrected) >= min(baseline):
        return Verdict(False, ratio, f"{said}, but the samples overlap")
    return Verdict(True, ratio, f"{said}, {-z:.1f} sd below the other cases")


def regressions(
    pairs: dict[Hashable, tuple[list[float], list[float]]],
) -> tuple[dict[Hashable, Verdict], Drift | None]:
    """A verdict per case of a comparison (baseline samples, current samples), and its drift."""
    run = drift(pairs)
    return {key: regression(base, cur, run) for key, (base, cur) in pairs.items()}, run
