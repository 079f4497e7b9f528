"""The comparison ladder: metrics of a sharded run against its reference, a pass/fail
verdict against per-precision tolerances, and diagnoses a user can act on."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from harness.records import diagnose, envelope
from harness.records.diagnose import PART_NAMES
from harness.records.outputs import Output

CONTAINMENT_TOP_K = 5


@dataclass(frozen=True)
class Tolerance:
    atol: float  # max |Δ| of logits allowed beyond rtol * |ref|
    rtol: float
    kl: float  # max KL(ref || test) at any position
    layer: float  # max |Δ| of a hidden state relative to that state's max |ref|


# One place for tolerances, keyed by precision label (see Case.precision).
# fp32 tensor parallel differs by <= ~5e-6 on these tiny models and pipeline is bit-exact
# on the CPU backend (README, "What a run does"); the bounds leave ~10x headroom and catch a 1e-3
# relative perturbation of one expert.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=5e-5, rtol=1e-5, kl=1e-7, layer=1e-4),
    "q8": Tolerance(atol=5e-5, rtol=1e-5, kl=1e-7, layer=1e-4),
    "q4": Tolerance(atol=5e-5, rtol=1e-5, kl=1e-7, layer=1e-4),
    "bf16": Tolerance(atol=0.25, rtol=0.02, kl=5e-3, layer=0.05),
    "fp16": Tolerance(atol=0.05, rtol=5e-3, kl=1e-3, layer=0.01),
}


def tolerance_for(precision: str, overrides: dict | None = None) -> Tolerance:
    """The tolerance of a precision label (`q4-bf16` uses `bf16`), with per-case overrides."""
    base = precision.split("-")[-1] if "-" in precision else precision
    tol = TOLERANCES.get(base, TOLERANCES["fp32"])
    return replace(tol, **(overrides or {}))


@dataclass
class Metrics:
    max_abs: float
    rel: float
    cosine: float
    kl_max: float
    top1: float  # fraction of prefill positions whose argmax agrees
    decode_max_abs: float  # over decode steps up to the first greedy divergence
    tokens_match: bool
    first_token_divergence: int | None  # decode step index where greedy tokens first differ
    topk_contained: bool | None  # at that divergence: each side's token in the other's top-k
    norm_ratio: float
    entropy_ref: float
    entropy_test: float
    nonfinite: bool


@dataclass
class Comparison:
    passed: bool
    metrics: Metrics
    diagnoses: list[str] = field(default_factory=list)
    first_divergent_layer: int | None = None
    first_divergent_part: str | None = None
    warnings: list[str] = field(default_factory=list)
    # Low precision held against an fp32 truth (records.envelope): the segments' ratios.
    envelope: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _kl(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    p, q = _softmax(ref.astype(np.float64)), _softmax(test.astype(np.float64))
    return np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)), axis=-1)


def _entropy(x: np.ndarray) -> float:
    p = _softmax(x.astype(np.float64))
    return float(np.mean(-np.sum(p * np.log(p + 1e-300), axis=-1)))


def _within(ref: np.ndarray, test: np.ndarray, tol: Tolerance) -> bool:
    return bool(np.all(np.abs(test - ref) <= tol.atol + tol.rtol * np.abs(ref)))


def _greedy_divergence(ref: Output, test: Output) -> int | None:
    steps = min(ref.tokens.shape[1], test.tokens.shape[1])
    for s in range(steps):
        if not np.array_equal(ref.tokens[:, s], test.tokens[:, s]):
            return s
    return None


def _compared_steps(ref: Output, test: Output, diverge: int | None) -> int:
    """How many decode steps both sides fed the same tokens. Decode step s consumes the
    token chosen after step s - 1 (tokens[:, 0] comes from prefill), so a free-running
    test matches up to its first divergence; a teacher-forced one fed the reference's."""
    if diverge is None or test.forced:
        return ref.decode.shape[0]
    return min(diverge, ref.decode.shape[0])


def _topk_contained(ref_logits: np.ndarray, test_logits: np.ndarray) -> bool:
    """Each side's greedy token is in the other's top-k, row by row."""
    for r, t in zip(ref_logits, test_logits, strict=True):
        r_top, t_top = np.argsort(-r)[:CONTAINMENT_TOP_K], np.argsort(-t)[:CONTAINMENT_TOP_K]
        if int(np.argmax(t)) not in r_top or int(np.argmax(r)) not in t_top:
            return False
    return True


def metrics(ref: Output, test: Output) -> Metrics:
    finite = bool(np.all(np.isfinite(test.prefill)) and np.all(np.isfinite(test.decode)))
    diff = np.nan_to_num(test.prefill - ref.prefill, nan=np.inf)
    # Padding positions hold zeros on both sides: only prompt tokens are measured.
    valid = ref.valid
    r = ref.prefill[valid]
    t = np.nan_to_num(test.prefill[valid], nan=0.0, posinf=0.0, neginf=0.0)
    cos = np.sum(r * t, -1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(t, axis=-1) + 1e-30)
    diverge = _greedy_divergence(ref, test)
    compared = _compared_steps(ref, test, diverge)
    dec_diff = np.abs(test.decode[:compared] - ref.decode[:compared]) if compared else np.zeros(1)
    contained = None
    if diverge is not None:
        last_test = Output(test.prefill, test.decode, test.tokens, {}, ref.prefill_calls)
        source_ref = ref.last_logits if diverge == 0 else ref.decode[diverge - 1]
        source_test = last_test.last_logits if diverge == 0 else test.decode[diverge - 1]
        contained = _topk_contained(source_ref, source_test)
    return Metrics(
        max_abs=float(np.max(np.abs(diff))),
        rel=float(np.linalg.norm(diff.astype(np.float64)) / (np.linalg.norm(r) + 1e-30))
        if finite
        else float("inf"),
        cosine=float(np.mean(cos)),
        kl_max=float(np.max(_kl(r, t))) if finite else float("inf"),
        top1=float(np.mean(np.argmax(r, -1) == np.argmax(t, -1))),
        decode_max_abs=float(np.nan_to_num(np.max(dec_diff), nan=np.inf)),
        tokens_match=diverge is None,
        first_token_divergence=diverge,
        topk_contained=contained,
        norm_ratio=float(np.linalg.norm(t) / (np.linalg.norm(r) + 1e-30)),
        entropy_ref=_entropy(r),
        entropy_test=_entropy(t),
        nonfinite=not finite,
    )


_LAYER_KEY = re.compile(r"layer\.(\d+)\.(attn|mlp|out)")
_PART_ORDER = {"attn": 0, "mlp": 1, "out": 2}


def first_divergent_layer(
    ref: dict[str, np.ndarray], test: dict[str, np.ndarray], tol: Tolerance
) -> tuple[int, str, np.ndarray, np.ndarray] | None:
    """The first (layer, part) whose hidden state differs beyond tolerance, in forward order."""
    keys = []
    for key in ref.keys() & test.keys():
        m = _LAYER_KEY.fullmatch(key)
        if m:
            keys.append((int(m.group(1)), _PART_ORDER[m.group(2)], m.group(2), key))
    for layer, _, part, key in sorted(keys):
        a, b = ref[key], test[key]
        if a.shape != b.shape:
            return layer, part, a, b
        scale = float(np.max(np.abs(a))) or 1.0
        if not np.all(np.isfinite(b)) or float(np.max(np.abs(b - a))) > tol.layer * scale:
            return layer, part, a, b
    return None


_ROUTER_KEY = re.compile(r"layer\.(\d+)\.router\.k(\d+)")


def _router_flips(ref: dict, test: dict) -> list[tuple[int, int, int, int, str]]:
    """(position, layer, row, k, key) of every token whose chosen top-k experts differ."""
    flips = []
    for key in ref.keys() & test.keys():
        m = _ROUTER_KEY.fullmatch(key)
        if not m or ref[key].shape != test[key].shape:
            continue
        layer, k = int(m.group(1)), int(m.group(2))
        chosen_ref = np.sort(np.argsort(-ref[key], axis=-1)[..., :k], axis=-1)
        chosen_test = np.sort(np.argsort(-test[key], axis=-1)[..., :k], axis=-1)
        for row, position in np.argwhere(np.any(chosen_ref != chosen_test, axis=-1)):
            flips.append((int(position), layer, int(row), k, key))
    return flips


def explain_routing_flip(ref: Output, test: Output, tol: Tolerance) -> str | None:
    """A warning if the mismatch is fully explained by router near-ties, else None.

    Explained means: in each affected prompt the earliest flip is a near-tie (the
    reference's k-th and (k+1)-th expert scores within the layer tolerance) reached with
    matching router inputs (scores close), and everything the flip cannot reach matches:
    the prompts without a flip entirely, and the positions before the flip in the others.
    The continuation after a flip is not compared.
    """
    flips = _router_flips(ref.layers, test.layers)
    if not flips:
        return None
    first: dict[int, tuple] = {}
    for flip in sorted(flips):
        first.setdefault(flip[2], flip)
    notes = []
    for row, (position, layer, _, k, key) in first.items():
        a, b = ref.layers[key][row, position], test.layers[key][row, position]
        scale = float(np.max(np.abs(a))) or 1.0
        ordered = np.sort(a)[::-1]
        margin = float(ordered[k - 1] - ordered[k])
        if margin > tol.layer * scale or float(np.max(np.abs(a - b))) > tol.layer * scale:
            return None
        if not _within(ref.prefill[row, :position], test.prefill[row, :position], tol):
            return None
        notes.append(f"prompt {row} position {position} layer {layer} (margin {margin:.1e})")
    clean = [r for r in range(ref.prefill.shape[0]) if r not in first]
    if clean and not _within(ref.prefill[clean], test.prefill[clean], tol):
        return None
    if clean and ref.decode.shape == test.decode.shape:
        steps = _greedy_divergence_rows(ref, test, clean)
        if steps and not _within(ref.decode[:steps, clean], test.decode[:steps, clean], tol):
            return None
    return (
        "routing flip at a router near-tie: "
        + "; ".join(notes)
        + "; the continuation is not compared"
    )


def _greedy_divergence_rows(ref: Output, test: Output, rows: list[int]) -> int:
    """How many decode steps the given prompts fed identical tokens to both sides."""
    steps = min(ref.decode.shape[0], ref.tokens.shape[1], test.tokens.shape[1])
    if test.forced:
        return steps
    for s in range(steps):
        if not np.array_equal(ref.tokens[rows, s], test.tokens[rows, s]):
            return s
    return steps


def _first_nonfinite_layer(states: dict[str, np.ndarray]) -> str | None:
    found = []
    for key, value in states.items():
        m = _LAYER_KEY.fullmatch(key)
        if m and not np.all(np.isfinite(value)):
            found.append((int(m.group(1)), _PART_ORDER[m.group(2)], m.group(2)))
    if not found:
        return None
    layer, _, part = min(found)
    return diagnose.layer_name(layer, PART_NAMES[part])


def _scale_factor(ref: np.ndarray, test: np.ndarray) -> float:
    """The least-squares s with test ≈ s * ref."""
    ref, test = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    return float(ref @ test / (ref @ ref + 1e-30))


def compare(
    ref: Output, test: Output, tol: Tolerance, world: int, truth: Output | None = None
) -> Comparison:
    """Compare a sharded run with its reference and explain a failure. With a `truth`
    (the same weights upcast to fp32, for a low-precision case), the verdict is the
    precision-aware one of `records.envelope`; the ladder's metrics are still reported."""
    if ref.prefill.shape != test.prefill.shape:
        return _shape_mismatch(ref, test)
    if truth is not None and truth.prefill.shape == ref.prefill.shape:
        return _against_truth(ref, test, truth, world)
    m = metrics(ref, test)
    prefill_ok = (
        not m.nonfinite
        and ref.prefill.shape == test.prefill.shape
        and _within(ref.prefill, test.prefill, tol)
        and m.kl_max <= tol.kl
    )
    compared = _compared_steps(ref, test, m.first_token_divergence)
    decode_ok = ref.decode.shape == test.decode.shape and (
        compared == 0 or _within(ref.decode[:compared], test.decode[:compared], tol)
    )
    # A greedy divergence is acceptable only as a near-tie: logits within tolerance so far
    # and each side's token within the other's top-k.
    tokens_ok = m.tokens_match or bool(m.topk_contained and prefill_ok and decode_ok)
    cmp = Comparison(passed=prefill_ok and decode_ok and tokens_ok, metrics=m)
    if not m.tokens_match and cmp.passed:
        cmp.warnings.append(f"near-tie: greedy tokens differ at step {m.first_token_divergence}")
    if not cmp.passed and not m.nonfinite:
        flip = explain_routing_flip(ref, test, tol)
        if flip is not None:
            cmp.passed = True
            cmp.warnings.append(flip)
    if not cmp.passed:
        _diagnose(cmp, ref, test, tol, world, prefill_ok)
    return cmp


def _shape_mismatch(ref: Output, test: Output) -> Comparison:
    nan = float("nan")
    m = Metrics(nan, nan, nan, nan, nan, nan, False, 0, None, nan, nan, nan, False)
    return Comparison(
        passed=False,
        metrics=m,
        diagnoses=[diagnose.shape_mismatch(list(test.prefill.shape), list(ref.prefill.shape))],
    )


def _diagnose(
    cmp: Comparison, ref: Output, test: Output, tol: Tolerance, world: int, prefill_ok: bool
) -> None:
    if prefill_ok:
        # Hidden states are captured in prefill, which matched: nothing to localize.
        where, located = decode_divergence(ref, test, tol), None
    else:
        where = prefill_divergence(ref, test, tol)
        located = _localize(ref, test, tol, world, cmp.metrics.nonfinite)
    _explain(cmp, test, prefill_ok, [where] if where else [], located)
    if not cmp.diagnoses:
        cmp.diagnoses.append(diagnose.BEYOND_TOLERANCE)


def _explain(
    cmp: Comparison,
    test: Output,
    decode_only: bool,
    where: list[str],
    located: diagnose.Located | None,
) -> None:
    """The diagnoses of every ladder path, in one order: non-finite, decode-only, where
    in the shape, the layer, saturation."""
    m = cmp.metrics
    if m.nonfinite:
        cmp.diagnoses.append(diagnose.non_finite(_first_nonfinite_layer(test.layers)))
    if decode_only:
        cmp.diagnoses.append(diagnose.DECODE_ONLY)
    cmp.diagnoses += where
    if located is not None:
        cmp.first_divergent_layer, cmp.first_divergent_part = located.layer, located.part
        cmp.diagnoses += located.sentences
    if not m.nonfinite and (said := diagnose.saturated(m.entropy_ref, m.entropy_test)):
        cmp.diagnoses.append(said)


def _beyond(ref: np.ndarray, test: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Per row of the last axis: differs beyond tolerance (or is not finite)."""
    close = np.abs(test - ref) <= tol.atol + tol.rtol * np.abs(ref)
    return ~np.all(close, axis=-1)


def prefill_divergence(ref: Output, test: Output, tol: Tolerance) -> str | None:
    """Where in the prompt the logits first differ, and in which prefill call, when that
    says more than "everywhere": a position past the first, or a chunked prefill."""
    bad = _beyond(ref.prefill, test.prefill, tol) & ref.valid
    if not bad.any():
        return None
    position = int(np.nonzero(bad.any(axis=0))[0][0])
    if position == 0 and (ref.prefill_calls is None or ref.prefill_calls.max() == 0):
        return None
    return prompt_position(ref, position, int(np.nonzero(bad[:, position])[0][0]))


def prompt_position(ref: Output, position: int, row: int | None = None) -> str:
    """`from prompt token P (prefill chunk C of N)`: the chunk that held position P (in
    `row`, else in the first prompt that reaches it)."""
    calls = ref.prefill_calls
    if calls is None:
        return diagnose.from_prompt_token(position)
    if row is None:
        row = int(np.nonzero(calls[:, position] >= 0)[0][0])
    chunk = int(calls[row, position]) + 1
    return diagnose.from_prompt_token(position, chunk, int(calls.max()) + 1)


def decode_divergence(ref: Output, test: Output, tol: Tolerance) -> str | None:
    """The first decode step whose logits differ, by position in the sequence (prompt
    length + step), among the steps both sides fed the same tokens."""
    if ref.decode.shape != test.decode.shape:
        return None
    steps = _greedy_divergence_rows(ref, test, list(range(ref.decode.shape[1])))
    bad = _beyond(ref.decode[:steps], test.decode[:steps], tol)
    if not bad.any():
        return None
    step, row = (int(i) for i in np.argwhere(bad)[0])
    length = int(ref.valid[row].sum())
    return diagnose.from_decode_position(length + step, step + 1, ref.decode.shape[0])


def _layer_indices(states: dict[str, np.ndarray]) -> set[int]:
    return {int(m.group(1)) for key in states if (m := _LAYER_KEY.fullmatch(key))}


def _skipped_layer(ref: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> int | None:
    """The first layer the reference captured and the test did not, though the test
    captured a later one: a layer no rank ran (a pipeline stage off by one)."""
    expected, seen = _layer_indices(ref), _layer_indices(test)
    missing = sorted(i for i in expected - seen if seen and i < max(seen))
    return missing[0] if missing else None


def _localize(
    ref: Output, test: Output, tol: Tolerance, world: int, nonfinite: bool
) -> diagnose.Located:
    """The first divergent layer and sub-block, and whether it is scaled by N."""
    found = first_divergent_layer(ref.layers, test.layers, tol)
    if found is None:
        # Logits can fail on a hidden-state deviation below the layer tolerance (a 1e-3
        # perturbation of one expert in the last layer): look again, still 10x above the
        # tensor-parallel noise, before blaming what follows the last layer.
        found = first_divergent_layer(ref.layers, test.layers, replace(tol, layer=tol.layer / 10))
    is_scaled = False
    if found is not None:
        _, _, a, b = found
        if a.shape == b.shape and np.all(np.isfinite(b)) and world > 1:
            s = _scale_factor(a, b)
            residual = np.linalg.norm(b - s * a) / (np.linalg.norm(b) + 1e-30)
            is_scaled = abs(s - world) < 0.1 * world and residual < 0.1
    return diagnose.locate(
        _skipped_layer(ref.layers, test.layers),
        (found[0], PART_NAMES[found[1]]) if found else None,
        is_scaled,
        world,
        bool(ref.layers and test.layers) and not nonfinite,
    )


def layer_keys(states: dict[str, np.ndarray]) -> list[tuple[int, str, str]]:
    """(layer, part name, key) of captured decoder-layer states, in forward order."""
    found = []
    for key in states:
        m = _LAYER_KEY.fullmatch(key)
        if m:
            found.append((int(m.group(1)), _PART_ORDER[m.group(2)], PART_NAMES[m.group(2)], key))
    return [(layer, part, key) for layer, _, part, key in sorted(found)]


def _scaled_positions(truth: np.ndarray, test: np.ndarray, world: int) -> bool:
    """Most positions' states are the truth's times the world size: the least-squares
    factor and residual per position, their medians (a router flip's position, or bf16's
    rounding, does not move a median)."""
    t = truth.reshape(-1, truth.shape[-1]).astype(np.float64)
    b = test.reshape(-1, test.shape[-1]).astype(np.float64)
    if not np.all(np.isfinite(b)):
        return False
    s = np.sum(t * b, -1) / (np.sum(t * t, -1) + 1e-30)
    residual = np.linalg.norm(b - s[:, None] * t, axis=-1) / (np.linalg.norm(b, axis=-1) + 1e-30)
    return abs(float(np.median(s)) - world) < 0.1 * world and float(np.median(residual)) < 0.1


def token_agreement(m: Metrics, steps: int) -> str | None:
    """Greedy tokens, reported beside the verdict (vLLM's check_logprobs_close): where the
    sharded run's own choice first differs, and whether each side's token is in the
    other's top-k there."""
    if m.tokens_match:
        return None
    contained = "each in the other's" if m.topk_contained else "NOT each in the other's"
    return (
        f"greedy tokens differ from step {m.first_token_divergence} of {steps}, "
        f"{contained} top-{CONTAINMENT_TOP_K}"
    )


def _against_truth(ref: Output, test: Output, truth: Output, world: int) -> Comparison:
    m = metrics(ref, test)
    verdict = envelope.judge(ref, test, truth, layer_keys(truth.layers))
    cmp = Comparison(passed=verdict.passed and not m.nonfinite, metrics=m)
    cmp.envelope = verdict.to_dict()
    tokens = token_agreement(m, test.tokens.shape[1])
    if tokens:
        cmp.warnings.append(tokens)
    if verdict.blind:
        cmp.warnings.append(diagnose.ONLY_AGREEMENT)
    if cmp.passed:
        if verdict.layers:
            layer, part, segment = verdict.layers[0]
            what = diagnose.beyond_envelope(segment.name, segment.ratio, envelope.RATIO)
            cmp.warnings.append(diagnose.layers_only(what))
        return cmp
    beyond = [s for s in verdict.logits if s.beyond]
    if not beyond and verdict.outliers:
        return _outlying(cmp, ref, test, verdict, world, m.nonfinite)
    worst = max(beyond or [verdict.worst], key=lambda s: np.nan_to_num(s.ratio, nan=np.inf))
    where = [diagnose.beyond_envelope(worst.name, worst.ratio, envelope.RATIO)]
    first = next((s for s in beyond if s.start is not None), None)
    if first is not None and first.first_beyond is not None and ref.prefill_calls is not None:
        where.append(prompt_position(ref, first.first_beyond))
    divergent, is_scaled = None, False
    if verdict.layers:
        layer, part, _ = verdict.layers[0]
        divergent = layer, part
        key = next(k for i, p, k in layer_keys(truth.layers) if (i, p) == (layer, part))
        is_scaled = world > 1 and _scaled_positions(truth.layers[key], test.layers[key], world)
    located = diagnose.locate(
        _skipped_layer(ref.layers, test.layers),
        divergent,
        is_scaled,
        world,
        bool(ref.layers and test.layers) and not m.nonfinite,
    )
    decode_only = bool(beyond) and all(s.start is None for s in beyond)
    _explain(cmp, test, decode_only, where, located)
    return cmp


def ranks_apart(cmp: Comparison, apart: envelope.Disagreement, ref: Output, world: int) -> None:
    """A rank's comparison when two ranks hold different logits (records.envelope's
    `disagreement`): it fails, saying where they first part and the first layer they
    hold apart there, whatever its own envelope said (kept after, when it failed too)."""
    said = diagnose.ranks_apart(apart.ranks, apart.count, apart.ratio, envelope.AGREEMENT)
    if apart.prefill.any():
        row, position = min((int(p), int(r)) for r, p in np.argwhere(apart.prefill))[::-1]
        where = prompt_position(ref, position, row)
    else:
        step, row = (int(i) for i in np.argwhere(apart.decode)[0])
        length = int(ref.valid[row].sum())
        where = diagnose.from_decode_position(length + step, step + 1, apart.decode.shape[0])
    divergent = (apart.layer, apart.part) if apart.layer is not None else None
    located = diagnose.locate(None, divergent, False, world, False)
    own = [] if cmp.passed else cmp.diagnoses
    cmp.passed = False
    cmp.diagnoses = [said, where, *located.sentences]
    cmp.diagnoses += [d for d in own if d not in cmp.diagnoses]
    if located.layer is not None:
        cmp.first_divergent_layer, cmp.first_divergent_part = located.layer, located.part


def _outlying(
    cmp: Comparison,
    ref: Output,
    test: Output,
    verdict: envelope.EnvelopeVerdict,
    world: int,
    nonfinite: bool,
) -> Comparison:
    """Every segment's median within the envelope, some positions not: where the first
    outlier starts (its first layer beyond its own bound localizes it)."""
    first = min(verdict.outliers, key=lambda o: (o.position, o.row))
    worst = max(verdict.outliers, key=lambda o: o.ratio)
    said = diagnose.outlier_positions(
        first.segment, len(verdict.outliers), worst.ratio, envelope.POSITION_RATIO
    )
    where = [said, prompt_position(ref, first.position, first.row)]
    divergent = (first.layer, first.part) if first.layer is not None else None
    located = diagnose.locate(
        _skipped_layer(ref.layers, test.layers),
        divergent,
        False,
        world,
        bool(ref.layers and test.layers) and not nonfinite,
    )
    _explain(cmp, test, False, where, located)
    return cmp


def _finite(x: np.ndarray) -> np.ndarray:
    """NaN and infinities as distinct finite sentinels: equal where both sides have them."""
    return np.nan_to_num(x, nan=-3e38, posinf=3e38, neginf=-2e38)


def compare_requests(first: Output, later: Output, number: int, tol: Tolerance) -> dict:
    """Request `number` (the same prompts, prefilled and decoded again on the same model)
    against the first: `{"request", "max_abs", "diagnosis"}`, the diagnosis None when it
    matches. Same model, same inputs, same process: only state carried from one request
    into the next can change the numbers, so the bound is fp32's whatever the precision."""
    # A non-finite value where the first request has the same one is no difference.
    steps = later.decode.shape[0]
    first = Output(
        _finite(first.prefill), _finite(first.decode[:steps]), first.tokens, {}, first.prefill_calls
    )
    later = Output(_finite(later.prefill), _finite(later.decode), later.tokens, {})
    prefill = np.abs(later.prefill - first.prefill)[first.valid]
    decode = np.abs(later.decode - first.decode)
    max_abs = float(max(prefill.max(initial=0.0), decode.max(initial=0.0)))
    where = None
    if (_beyond(first.prefill, later.prefill, tol) & first.valid).any():
        where = prefill_divergence(first, later, tol) or "from prompt token 0"
    elif _beyond(first.decode, later.decode, tol).any():
        step = int(np.argwhere(_beyond(first.decode, later.decode, tol))[0][0])
        where = diagnose.from_decode_step(step + 1, steps)
    diagnosis = None if where is None else diagnose.state_carried(number, where)
    return {"request": number, "max_abs": max_abs, "diagnosis": diagnosis}
