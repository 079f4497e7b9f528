"""When is a throughput drop real? Two rules over raw tok/s samples.

`judge` (case runs: `harness compare`, the compare page) holds each measure (a case's
prefill or decode tok/s on one strategy and rank count) against its own history on the same
setup: the last `HISTORY` runs of the same kind, rank count, hosts, backend and mlx / mlx-lm
versions, before the step under judgement. With x the log of a run's median tok/s and the
run's drift d (the median over all its measures of x minus that measure's baseline median:
how much faster or slower the whole machine ran), a measure is *below its history* in a run
when x - d is lower than every baseline run's and more than 1 - `RATIO` (20%) under their
median. A case regressed when every part of it (prefill and decode) is under `CLEAR` (0.5)
times its history's median in the newest run, after the drift: a *clear drop*, flagged at
its first run. A part alone (decode slowed by a per-step sync or cache copy, prefill
unchanged) regressed when it was below its history in each of the last `PERSIST` (3) runs:
a step that persists, flagged by its third run. The harness takes a second look at a case
with any part under `CLEAR` in the same run (`harness.run.parent.loop.second_look`) and the
run-to-run diff reads the faster of the two looks, so a burst of load has to hit the case
twice, seconds apart, to count. Below in the latest run otherwise is a *suspect*, reported
and not flagged. At least `MIN_BASELINE` (10) baseline runs are needed: if runs were
exchangeable (noise alone), the chance that the newest `PERSIST` all fall below every one
of n baseline runs is PERSIST! n! / (n + PERSIST)!: 0.4% per measure at n = 10.

Measured with ci/bench/tok_s_noise.sh (16 MoE cases, 8 tensor-parallel architectures x
fp32/q4, 2 ranks; 21 unchanged runs, then one where every model call of qwen3_moe takes 3x
its time), each run judged against the runs before it:
- ranks left to the scheduler, quiet machine: the same case's tok/s moved up to 5x between
  unchanged runs, prefill and decode together (the ranks ran in regimes); 5 of 11 judged
  runs had a whole case under 0.5x (0.15-0.47x), while the slowed case stayed at 0.57x. Under
  load (an earlier series: four other jobs, load 5-21) decode moved 10-799 and only three
  runs in a row told a step from noise;
- ranks kept to a core each (harness.run.parent.job.cpu_shares), quiet: 11 unchanged
  judged runs, no whole case under 0.83x; the slowed run: qwen3_moe at 0.35-0.41x in both
  parts, fp32 and q4, and nothing else;
- kept to their cores, one core busy for 1.5 s every 3.5-7.5 s: one run of 7 held three
  cases at 0.40-0.49x in both parts (what the second look is for); with the second look,
  11 unchanged judged runs flagged nothing and the slowed run flagged qwen3_moe (fp32 and
  q4, both parts, confirmed by the second look) and nothing else.
Change-point detection over the series (E-Divisive, as in Apache Otava or MongoDB's
signal-processing-algorithms) asks for a level that holds on both sides of the change and
needs several points after it; the persistent rule is its smallest form for a verdict at
the newest run, without scipy or a dependency, and the second look gives a clear drop its
second point within the run.

`regressions` (bench runs: `harness bench` on a quiet machine, many trials per case) keeps
the pairwise rule: a case regressed from the baseline run when its median is under `RATIO`
times the baseline's after the comparison's drift, its samples do not overlap, and its log
ratio lies `Z` robust standard deviations below the other cases'.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable
from dataclasses import dataclass

RATIO = 0.8
CLEAR = 0.5  # a whole case under this ratio of its history is a regression at once
PERSIST = 3  # consecutive runs below the history before a smaller drop is a regression
HISTORY = 20  # baseline runs a measure is held against
MIN_BASELINE = 10
MIN_SAMPLES = 3
MIN_CASES = 4
Z = 4.0
MIN_SPREAD = 0.05  # log-ratio spread floor: identical builds on a quiet machine still move ~5%


@dataclass
class TokSVerdict:
    regressed: bool
    ratio: float | None  # current median / baseline median, after the run's drift
    reason: str  # why it is or is not a regression, for the report
    suspect: bool = False  # below its history in the latest run only
    clear: bool = False  # regressed by a clear drop of the whole case in the latest run
    look: bool = False  # a part under CLEAR alone: worth a second look in the same run


@dataclass
class Drift:
    ratio: float  # the comparison's median ratio: how much faster or slower everything ran
    spread: float  # robust standard deviation of the cases' log ratios
    cases: int


# Oldest first: per run, measure -> tok/s samples; no samples: the case timed out.
Runs = list[dict[Hashable, list[float]]]


def rates(tok_s: float | None, seconds: list[float] | None) -> list[float]:
    """Per-sample tok/s from the seconds each timed call took; `tok_s` is the throughput of
    the median call, which fixes the tokens per call without knowing the prompts."""
    if not tok_s or not seconds or min(seconds) <= 0:
        return []
    tokens = tok_s * statistics.median(seconds)
    return [tokens / s for s in seconds]


def _level(samples: list[float]) -> float | None:
    """log of the median tok/s; a timeout (no samples) was slower than anything measured."""
    if not samples:
        return -math.inf
    return math.log(statistics.median(samples)) if len(samples) >= MIN_SAMPLES else None


def _levels(runs: Runs) -> list[dict[Hashable, float]]:
    return [
        {key: level for key, s in run.items() if (level := _level(s)) is not None} for run in runs
    ]


def _drifts(levels: list[dict[Hashable, float]], centre: dict[Hashable, float]) -> list[float]:
    """Per run, the median shift of its measures from their baseline centres."""
    out = []
    for run in levels:
        shifts = [x - centre[key] for key, x in run.items() if key in centre and x > -math.inf]
        out.append(statistics.median(shifts) if len(shifts) >= MIN_CASES else 0.0)
    return out


def _case(key: Hashable) -> Hashable:
    """The case a measure belongs to: keys are (..., part) tuples, the part last."""
    return key[:-1] if isinstance(key, tuple) else key


@dataclass
class _Held:
    ratio: float
    said: str
    below: dict[int, bool]  # run index -> below its history there
    window: list[int]
    drift: float


def judge(runs: Runs) -> tuple[dict[Hashable, TokSVerdict], float | None]:
    """A verdict for every measure of the newest run (`runs[-1]`) from the runs of its
    setup before it, and the newest run's drift (None without a baseline)."""
    levels = _levels(runs)
    verdicts: dict[Hashable, TokSVerdict] = {}
    held: dict[Hashable, _Held] = {}
    for key in levels[-1] if levels else {}:
        measured = [i for i, run in enumerate(levels) if key in run]
        # Too few runs for a step: the newest alone can still be a suspect.
        enough = len(measured) >= MIN_BASELINE + PERSIST
        window = measured[-PERSIST:] if enough else measured[-1:]
        baseline = [i for i in measured if i < window[0]][-HISTORY:]
        judged = _held_against(levels, key, window, baseline)
        if isinstance(judged, str):
            verdicts[key] = TokSVerdict(False, None, judged)
        else:
            held[key] = judged
    # A drop past CLEAR in every part of a case at once is a regression in its first run;
    # a part alone (a per-step sync or a cache copy slows decode alone) needs PERSIST runs:
    # a burst of load holds one part down more often than both (measured here: one case's
    # prefill for three runs in a row), and the second look, taken for any part under
    # CLEAR, filters most of those.
    case_clear: dict[Hashable, bool] = {}
    for key, h in held.items():
        case_clear[_case(key)] = case_clear.get(_case(key), True) and h.ratio < CLEAR
    for key, h in held.items():
        if case_clear[_case(key)]:
            reason = (
                f"{h.said}; every part of the case under {CLEAR}x its history in this run: "
                "a drop that large is no scheduling regime of local ranks kept to their cores"
            )
            verdicts[key] = TokSVerdict(True, h.ratio, reason, clear=True)
        elif len(h.window) == PERSIST and all(h.below[i] for i in h.window):
            reason = f"{h.said}; below every one of them in each of the last {PERSIST} runs"
            verdicts[key] = TokSVerdict(True, h.ratio, reason)
        elif h.below[h.window[-1]]:
            count = sum(h.below[i] for i in h.window)
            reason = (
                f"{h.said}; below every one of them in this run ({count} of the last "
                f"{len(h.window)}): a regression once it stays there for {PERSIST} runs"
            )
            verdicts[key] = TokSVerdict(False, h.ratio, reason, suspect=True, look=h.ratio < CLEAR)
        else:
            verdicts[key] = TokSVerdict(False, h.ratio, f"{h.said}: within its history")
    drifts = [h.drift for h in held.values()]
    return verdicts, (math.exp(statistics.median(drifts)) if drifts else None)


def _held_against(levels, key, window: list[int], baseline: list[int]) -> _Held | str:
    """The measure `key` in the `window` runs against its `baseline` runs, or why not."""
    if len(baseline) < MIN_BASELINE:
        earlier = sum(key in run for run in levels) - 1
        return f"{earlier} earlier run(s) of this setup: the rule needs {MIN_BASELINE}"
    span = baseline + window
    # A timeout in the baseline says nothing about the usual speed: left out there.
    measured = {
        k: [levels[i][k] for i in baseline if levels[i].get(k, -math.inf) > -math.inf]
        for k in levels[window[-1]]
    }
    centre = {k: statistics.median(v) for k, v in measured.items() if len(v) >= MIN_BASELINE}
    drift = dict(zip(span, _drifts([levels[i] for i in span], centre), strict=True))
    history = [levels[i][key] - drift[i] for i in baseline if levels[i][key] > -math.inf]
    if len(history) < MIN_BASELINE:
        return f"measured in {len(history)} baseline runs only"
    middle = statistics.median(history)
    fence = min(min(history), middle + math.log(RATIO))
    below = {i: levels[i][key] - drift[i] < fence for i in window}
    now = levels[window[-1]][key] - drift[window[-1]]
    ratio = math.exp(now - middle)  # 0 for a timeout
    said = (
        f"median at {ratio:.2f}x its last {len(baseline)} runs' after this run's drift of "
        f"{math.exp(drift[window[-1]]):.2f}x"
        if now > -math.inf
        else f"timed out, slower than any of its last {len(baseline)} runs"
    )
    return _Held(ratio, said, below, window, drift[window[-1]])


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


def regression(baseline: list[float], current: list[float], run: Drift | None) -> TokSVerdict:
    """Whether one bench case's `current` tok/s samples regressed from `baseline`, within a
    comparison whose drift is `run` (see the module docstring)."""
    if min(len(baseline), len(current)) < MIN_SAMPLES:
        return TokSVerdict(False, None, f"fewer than {MIN_SAMPLES} samples on a side")
    ratio = _ratio(baseline, current)
    if run is None:
        return TokSVerdict(False, ratio, f"fewer than {MIN_CASES} cases to measure the noise")
    relative = ratio / run.ratio
    z = math.log(relative) / run.spread
    corrected = [x / run.ratio for x in current]
    said = f"median at {ratio:.2f}x, {relative:.2f}x after the run's drift of {run.ratio:.2f}x"
    if relative >= RATIO or z >= -Z:
        return TokSVerdict(False, ratio, f"{said}: within noise")
    if max(corrected) >= min(baseline):
        return TokSVerdict(False, ratio, f"{said}, but the samples overlap")
    return TokSVerdict(True, ratio, f"{said}, {-z:.1f} sd below the other cases")


def regressions(
    pairs: dict[Hashable, tuple[list[float], list[float]]],
) -> tuple[dict[Hashable, TokSVerdict], Drift | None]:
    """A verdict per bench case of a comparison (baseline samples, current samples)."""
    run = drift(pairs)
    return {key: regression(base, cur, run) for key, (base, cur) in pairs.items()}, run
