"""When is a throughput drop real? A rule over raw samples, shared by every timing source
(`harness run`'s per-case samples today, bench trials later).

The rule: the current run regressed when its median is below `RATIO` (0.8) times the
baseline median AND the two sample sets do not overlap (every current sample is slower
than every baseline sample), with at least `MIN_SAMPLES` samples on each side.

Why this and not a Mann-Whitney test: at the 3 to 5 samples a run keeps, Mann-Whitney's
only significant outcome is exactly "no overlap" (U = 0; one-sided p = 0.05 at 3 vs 3,
0.004 at 5 vs 5), so the non-overlap rule is that test at its strongest level, stated in
words a reader can check by eye. The ratio adds practical significance: on a shared CPU two
runs of the same build differ by 10 to 30% in medians, and a consistent but small shift is
not worth a red nightly. Fewer than `MIN_SAMPLES` samples cannot tell noise from change
(one sample each reduces the rule to a ratio), so such a pair is never flagged.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

RATIO = 0.8
MIN_SAMPLES = 3


@dataclass
class Verdict:
    regressed: bool
    ratio: float | None  # current median / baseline median
    reason: str  # why it is or is not a regression, for the report


def rates(tok_s: float | None, seconds: list[float] | None) -> list[float]:
    """Per-sample tok/s from the seconds each timed call took; `tok_s` is the throughput of
    the median call, which fixes the tokens per call without knowing the prompts."""
    if not tok_s or not seconds or min(seconds) <= 0:
        return []
    tokens = tok_s * statistics.median(seconds)
    return [tokens / s for s in seconds]


def throughput_regression(baseline: list[float], current: list[float]) -> Verdict:
    """Whether `current` tok/s samples regressed from `baseline` (higher is faster)."""
    if min(len(baseline), len(current)) < MIN_SAMPLES:
        return Verdict(False, None, f"fewer than {MIN_SAMPLES} samples on a side")
    ratio = statistics.median(current) / statistics.median(baseline)
    if ratio >= RATIO:
        return Verdict(False, ratio, f"median at {ratio:.2f}x of the baseline")
    if max(current) >= min(baseline):
        return Verdict(False, ratio, f"median at {ratio:.2f}x but the samples overlap")
    return Verdict(True, ratio, f"median at {ratio:.2f}x and every sample slower")
