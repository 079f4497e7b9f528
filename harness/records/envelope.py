"""The precision-aware verdict: is a low-precision sharded run further from the truth than
the single-rank run at the same precision is?

With bf16 activations (q4-bf16, q8-bf16, bf16) fixed tolerances cannot tell rounding from a
bug: on the zoo's tiny MoE models a correct tensor parallel differs from the single-rank
run by up to ~7 logits, and a router near-tie rounded the other way changes a token's
experts outright. So the question is relative. The ranks compute a *truth*: the same model,
its weights upcast to float32 (the same quantized values, nothing re-quantized), run
single-rank with its decode fed the reference's tokens. Both the single-rank reference and
the sharded run (decode teacher-forced on the reference's tokens too) are measured against
it, position by position (|x - truth| / |truth| over the vocabulary or hidden size), and the
sharded run's typical error (the median over a segment's positions) must stay within
`RATIO` times the single-rank run's typical error over the same positions. Medians, because
a router flip gives one position an error of 20-100% on either side; a bug moves them all.

Segments: the logits of each prefill call (consecutive calls merged until each holds at
least `MIN_POSITIONS` prompt tokens, so a 1-token last call is not a sample of one), the
decode steps, and every captured layer state over the same prefill segments. A case fails
when a logits segment's ratio exceeds `RATIO`; the first failing layer (in forward order,
in the first failing prefill segment) localizes it. Outputs decide: layer states alone
never fail a case (a captured state is what a module returned, not always what flowed on).

A median cannot see a bug at a few positions, so every prefill position is also judged on
its own: its error against `POSITION_RATIO` times what the single-rank run reaches there
(its own error at that position, at least the segment's median: a near-tie the single-rank
run rounded the other way too, and a pipeline bit-identical to it, stay inside). A position
beyond it is explained by a flip of rounding's there or, through a later layer's attention,
at an earlier position of its sequence: a router that chose other experts than the
truth's while what fed it and its scores were within rounding (`rounding_flips`), or an
attention's own top-k that selected other keys (`selection_flips`). Any other position
beyond it fails the case, localized at the first captured state beyond the same bound.

And the ranks must agree: every rank's logits, prompt positions and decode steps, within
`AGREEMENT` of the lowest rank's (`disagreement`); a rank that kept its own partial sum at
a few positions fails there even where each rank alone stays inside its envelope.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from harness.records.outputs import Output

# Measured on 2 ranks, short shape, every MoE architecture of the zoo (mlx 0.32.4 CPU,
# mlx-lm 0.32.2): correct runs (mlx-lm's tp and pp at q4-bf16 and q8-bf16, 69 cases)
# reached median ratios of at most 1.81 on prefill logits, 3.49 on decode logits (8
# samples) and 2.75 on a layer; pipeline parallel is bit-exact (1.00). The catalog's
# structural faults at q4-bf16 (an extra, missing or unsharded all_sum, experts split on the
# wrong axis or from the wrong rank, a fused projection split contiguously) reached 5.3-13
# on prefill logits and 8.8-36 at the layer they break. 5 sits between the two.
RATIO = 5.0
# Measured on 2 ranks (mlx 0.32.4 CPU, mlx-lm 0.32.2, every architecture of the zoo, tp and
# pp, q4-bf16 and q8-bf16, short, long-chunked and mixed shapes, seeds 0-3: 1,048 cases):
# with flips explained by what fed the router and by attention's own selections, the
# unexplained positions of correct runs reached at most 2.1x (qwen3_5's mixed batch at
# q4-bf16; 2.75x on longcat_flash before its router was captured). A partial MLP/MoE sum
# kept at 1 of 16 positions of the last layer moved those positions 3.2-10x on every
# architecture at q4-bf16. 3 sits between the two.
POSITION_RATIO = 3.0
# Correct sharding ends every step in a collective (an all_sum, an all_gather), so every
# rank holds the same logits: bit for bit under mlx-lm's tp and pp on every architecture
# of the zoo (measured on 2 ranks at q4-bf16). Two ranks apart by more than the
# single-rank run's median rounding error at a position hold values no rounding explains
# (a rank that kept its own partial sum there); a strategy whose last collective rounds
# differently on each rank stays far inside. The catalog's partial sum kept at 1 of 16
# positions put its ranks 2.4-16x apart.
AGREEMENT = 1.0
MIN_POSITIONS = 8
# A single-rank error is never taken below bf16's rounding of one value (2^-8 relative).
FLOOR = 2.0**-8


@dataclass
class Segment:
    name: str  # "prefill tokens 0-31", "decode steps 1-4", "layer 2 (attention) ..."
    single: float  # median relative error of the single-rank run against the truth
    sharded: float  # the same for the sharded run
    start: int | None = None  # the first prompt position of a prefill segment
    first_beyond: int | None = None  # the first position there beyond RATIO x single

    @property
    def ratio(self) -> float:
        return self.sharded / max(self.single, FLOOR)

    @property
    def beyond(self) -> bool:
        return not self.ratio <= RATIO  # NaN is beyond


@dataclass
class Outlier:
    """A prompt position whose logits are beyond `POSITION_RATIO`, and where it starts."""

    row: int
    position: int
    ratio: float  # its error over the segment's single-rank median
    segment: str
    layer: int | None = None  # the first captured state beyond the bound there
    part: str | None = None


@dataclass
class EnvelopeVerdict:
    passed: bool
    logits: list[Segment] = field(default_factory=list)
    layers: list[tuple[int, str, Segment]] = field(default_factory=list)  # failing only
    outliers: list[Outlier] = field(default_factory=list)  # unexplained positions
    explained: int = 0  # positions beyond POSITION_RATIO explained by a flip of rounding's
    # Nothing captured to tell a flip from a bug: the segments are shown, not judged.
    blind: bool = False

    @property
    def worst(self) -> Segment | None:
        every = [*self.logits, *(s for _, _, s in self.layers)]
        return max(every, key=lambda s: np.nan_to_num(s.ratio, nan=np.inf), default=None)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "ratio_limit": RATIO,
            "logits": [_segment_dict(s) for s in self.logits],
            "layers": [{"layer": i, "part": p, **_segment_dict(s)} for i, p, s in self.layers],
            "position_ratio_limit": POSITION_RATIO,
            "outliers": [o.__dict__ for o in self.outliers],
            "explained": self.explained,
            "blind": self.blind,
        }


def _segment_dict(s: Segment) -> dict:
    return {"name": s.name, "single": s.single, "sharded": s.sharded, "ratio": s.ratio}


def relative_errors(x: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per position (all axes but the last): |x - truth| / |truth|; NaN where not finite."""
    x, truth = x.astype(np.float64), truth.astype(np.float64)
    err = np.linalg.norm(x - truth, axis=-1) / (np.linalg.norm(truth, axis=-1) + 1e-30)
    return np.where(np.isfinite(err), err, np.nan)


def _median(values: np.ndarray) -> float:
    # A NaN anywhere (a non-finite value) makes the segment's error NaN: beyond.
    return float(np.median(values)) if values.size else 0.0


def prefill_segments(ref: Output) -> list[tuple[int, np.ndarray]]:
    """(first position, [B, L] mask) per segment: prefill calls in order, merged until
    each holds MIN_POSITIONS prompt tokens (the remainder joins the last segment)."""
    valid = ref.valid
    if ref.prefill_calls is None:
        return [(0, valid)]
    segments: list[tuple[int, np.ndarray]] = []
    current = np.zeros_like(valid)
    for call in range(int(ref.prefill_calls.max()) + 1):
        current |= ref.prefill_calls == call
        if current.sum() >= MIN_POSITIONS:
            segments.append((int(np.nonzero(current.any(axis=0))[0][0]), current))
            current = np.zeros_like(valid)
    if current.any():
        if segments:
            segments[-1] = (segments[-1][0], segments[-1][1] | current)
        else:
            segments.append((int(np.nonzero(current.any(axis=0))[0][0]), current))
    return segments


def _name(start: int, mask: np.ndarray) -> str:
    end = int(np.nonzero(mask.any(axis=0))[0][-1])
    return f"prefill tokens {start}-{end}"


def judge(ref: Output, test: Output, truth: Output, layer_keys: list) -> EnvelopeVerdict:
    """Hold the sharded run (`test`) and the single-rank run (`ref`) against the truth.
    `layer_keys`: (layer, part, key) of the captured states, in forward order."""
    verdict = EnvelopeVerdict(passed=True)
    segments = prefill_segments(ref)
    e_ref = relative_errors(ref.prefill, truth.prefill)
    e_test = relative_errors(test.prefill, truth.prefill)
    for start, mask in segments:
        segment = Segment(_name(start, mask), _median(e_ref[mask]), _median(e_test[mask]), start)
        limit = RATIO * max(segment.single, FLOOR)
        beyond = ~(e_test <= limit) & mask
        if beyond.any():
            segment.first_beyond = int(np.nonzero(beyond.any(axis=0))[0][0])
        verdict.logits.append(segment)
    steps = min(ref.decode.shape[0], test.decode.shape[0], truth.decode.shape[0])
    if steps and test.forced:
        # Only the steps a token came out of (a serve program's requests emit at their
        # own steps; the rest are empty rows that would pull the medians to nothing).
        emitted = ref.decode_valid[:steps]
        verdict.logits.append(
            Segment(
                f"decode steps 1-{steps}",
                _median(relative_errors(ref.decode[:steps], truth.decode[:steps])[emitted]),
                _median(relative_errors(test.decode[:steps], truth.decode[:steps])[emitted]),
            )
        )
    # Layers: the first failing prefill segment, else every prefill position.
    failing = next((s for s in verdict.logits if s.beyond and s.start is not None), None)
    where = next((m for st, m in segments if failing and st == failing.start), ref.valid)
    for layer, part, key in layer_keys:
        if key not in test.layers or key not in truth.layers or key not in ref.layers:
            continue
        a, b, t = ref.layers[key], test.layers[key], truth.layers[key]
        if a.shape != t.shape or b.shape != t.shape:
            continue
        segment = Segment(
            f"layer {layer} ({part})",
            _median(relative_errors(a, t)[where]),
            _median(relative_errors(b, t)[where]),
        )
        if segment.beyond:
            verdict.layers.append((layer, part, segment))
    if not truth.layers:
        # Nothing captured (a serve program through mlx-lm's BatchGenerator): a router flip
        # of rounding's in a request's prompt moves every token it emits, and nothing tells
        # it from a bug; with one request emitting one token a median is a sample of one
        # (glm4_moe at q4-bf16 reached 25x so). Only the ranks' agreement decides there.
        verdict.blind = True
        return verdict
    for start, mask in segments:
        _judge_positions(verdict, ref, test, truth, layer_keys, _name(start, mask), mask)
    verdict.passed = not any(s.beyond for s in verdict.logits) and not verdict.outliers
    return verdict


@dataclass
class Disagreement:
    """Two ranks whose logits are more than `AGREEMENT` apart: where, and by how much."""

    ranks: tuple[int, int]
    ratio: float  # the largest distance, over the single-rank run's median error
    prefill: np.ndarray  # [B, L] the prompt positions beyond
    decode: np.ndarray  # [S, B] the decode steps beyond
    layer: int | None = None  # the first captured state the two ranks hold apart
    part: str | None = None

    @property
    def count(self) -> int:
        return int(self.prefill.sum() + self.decode.sum())


def disagreement(
    ref: Output, truth: Output, outputs: dict[int, Output], layer_keys: list
) -> Disagreement | None:
    """The first rank whose logits are apart from the lowest rank's (see `AGREEMENT`),
    localized at the first captured state both ranks hold apart at its first position."""
    ranks = sorted(outputs)
    first = outputs[ranks[0]]
    typical = max(_median(relative_errors(ref.prefill, truth.prefill)[ref.valid]), FLOOR)
    for rank in ranks[1:]:
        other = outputs[rank]
        if other.prefill.shape != first.prefill.shape or other.decode.shape != first.decode.shape:
            continue  # each rank's own comparison names a shape that differs
        prefill = _apart(first.prefill, other.prefill, truth.prefill) / typical
        decode = _apart(first.decode, other.decode, truth.decode) / typical
        beyond_prefill = ~(prefill <= AGREEMENT) & ref.valid
        beyond_decode = ~(decode <= AGREEMENT)
        if not beyond_prefill.any() and not beyond_decode.any():
            continue
        ratio = float(
            np.nan_to_num(max(prefill[ref.valid].max(initial=0), decode.max(initial=0)), nan=np.inf)
        )
        found = Disagreement((ranks[0], rank), ratio, beyond_prefill, beyond_decode)
        if beyond_prefill.any():
            row, position = min(((int(p), int(r)) for r, p in np.argwhere(beyond_prefill)))[::-1]
            found.layer, found.part = _apart_layer(
                ref, truth, first, other, layer_keys, row, position
            )
        return found
    return None


def _apart(a: np.ndarray, b: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per position: |a - b| / |truth|; NaN (beyond) where either is not finite."""
    if truth.shape != a.shape:
        truth = a
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = np.linalg.norm(a64 - b64, axis=-1) / (
        np.linalg.norm(truth.astype(np.float64), axis=-1) + 1e-30
    )
    return np.where(np.isfinite(out), out, np.nan)


def _apart_layer(ref, truth, first, other, layer_keys, row, position):
    """(layer, part) of the first state both ranks captured themselves and hold apart at
    (row, position), by the same rule; (None, None) when none does (pipeline ranks hold
    different layers)."""
    for layer, part, key in layer_keys:
        a, b, r, t = (
            first.layers.get(key),
            other.layers.get(key),
            ref.layers.get(key),
            truth.layers.get(key),
        )
        if (
            a is None
            or b is None
            or r is None
            or t is None
            or not a.shape == b.shape == r.shape == t.shape
        ):
            continue
        typical = max(_median(relative_errors(r, t)[ref.valid]), FLOOR)
        if not _apart(a[row, position], b[row, position], t[row, position]) <= AGREEMENT * typical:
            return layer, part
    return None, None


_ROUTER_KEY = re.compile(r"layer\.(\d+)\.router\.k(\d+)")


def rounding_flips(truth: Output, test: Output, ref: Output) -> dict[int, np.ndarray]:
    """Per MoE layer, [B, L] booleans: the test's router chose other experts than the
    truth's where what it was fed is within rounding (no further from the truth's than
    `POSITION_RATIO` times what the single-rank run's reaches there, as a position's
    logits are judged). A router fed within rounding that chooses otherwise met a near-tie
    at this precision, whatever its scores' gap (group-limited routing ties whole groups;
    a 5% gap flipped at q8-bf16). A flip whose input is already beyond rounding is not
    rounding's doing: something before the router went wrong."""
    flips = {}
    for m, t, x in _captured_pairs(truth, test, _ROUTER_KEY):
        k = int(m.group(2))
        # The experts a gate reported choosing, else the top-k of its scores.
        experts = m.group(0).replace(".router.", ".experts.")
        chosen_truth, chosen_test = truth.layers.get(experts), test.layers.get(experts)
        if chosen_truth is None or chosen_test is None or chosen_truth.shape != chosen_test.shape:
            chosen_truth = np.argsort(-t, axis=-1)[..., :k]
            chosen_test = np.argsort(-x, axis=-1)[..., :k]
        differ = np.any(
            _one_hot(chosen_truth, t.shape[-1]) != _one_hot(chosen_test, t.shape[-1]), axis=-1
        )
        fed = _beyond(truth, test, ref, f"layer.{m.group(1)}.router_in", t.shape[:2])
        # Not captured on every side: not shown to be rounding's.
        flips[int(m.group(1))] = differ & ~fed if fed is not None else np.zeros_like(differ)
    return flips


def _captured_pairs(truth: Output, test: Output, pattern: re.Pattern):
    """(match, the truth's state, the test's) for each state whose key matches `pattern`,
    captured alike on both sides."""
    for key, t in truth.layers.items():
        m = pattern.fullmatch(key)
        x = test.layers.get(key)
        if m and x is not None and x.shape == t.shape:
            yield m, t, x


def _one_hot(indices: np.ndarray, size: int) -> np.ndarray:
    """[..., size] booleans from [..., k] expert indices."""
    out = np.zeros((*indices.shape[:-1], size), dtype=bool)
    np.put_along_axis(out, indices.astype(np.int64), True, axis=-1)
    return out


_SELECT_KEY = re.compile(r"layer\.(\d+)\.select")


def selection_flips(truth: Output, test: Output, ref: Output) -> dict[int, np.ndarray]:
    """Per layer whose attention selects its own keys (an indexer's top-k, a block-sparse
    mask), [B, L] booleans: the test's selection differs from the truth's there while the
    layer's input (the previous layer's output; the embeddings for the first) is within
    rounding. The indexer's scores are not captured, so any such difference counts; one
    whose input a bug had already moved is not rounding's."""
    flips = {}
    for m, t, x in _captured_pairs(truth, test, _SELECT_KEY):
        layer = int(m.group(1))
        fed = _beyond(truth, test, ref, f"layer.{layer - 1}.out", t.shape[:2])
        differ = np.any(x != t, axis=-1)
        flips[layer] = differ if fed is None else differ & ~fed
    return flips


def _beyond(truth: Output, test: Output, ref: Output, key: str, shape: tuple) -> np.ndarray | None:
    """[B, L]: the test's captured state `key` is beyond `POSITION_RATIO` times what the
    single-rank run's reaches at that position (as a position's logits are judged); None
    where a side did not capture it."""
    r, x, t = (o.layers.get(key) for o in (ref, test, truth))
    if r is None or x is None or t is None or not r.shape == x.shape == t.shape:
        return None
    if r.shape[:2] != shape:
        return None
    valid = ref.valid if ref.valid.shape == shape else np.ones(shape, dtype=bool)
    scale = _position_scale(relative_errors(r, t), valid)
    return ~(relative_errors(x, t) <= POSITION_RATIO * scale)


def explained_positions(truth: Output, test: Output, ref: Output, shape: tuple) -> np.ndarray:
    """[B, L]: a flip of rounding's, a router's (`rounding_flips`) or an attention's own
    selection of keys (`selection_flips`), at this prompt position, or at an earlier one of
    its sequence in a layer some attention follows (a later layer's attention carries a
    flip on to every later position; one in the last layer stays where it is)."""
    flips: dict[int, np.ndarray] = {}
    for found in (rounding_flips(truth, test, ref), selection_flips(truth, test, ref)):
        for layer, f in found.items():
            if f.shape == shape:
                flips[layer] = flips.get(layer, np.zeros(shape, dtype=bool)) | f
    last = max((int(m.group(1)) for k in truth.layers if (m := _STATE.fullmatch(k))), default=0)
    own = np.logical_or.reduce([np.zeros(shape, dtype=bool), *flips.values()])
    return own | _earlier(flips, last, shape)


def _earlier(flips: dict[int, np.ndarray], layer: int, shape: tuple) -> np.ndarray:
    """[B, L]: a flip at an earlier position of the sequence in a layer before `layer`."""
    below = np.zeros(shape, dtype=bool)
    for flipped_layer, f in flips.items():
        if flipped_layer < layer:
            below |= f
    before = np.logical_or.accumulate(below, axis=1)
    return np.concatenate([np.zeros_like(before[:, :1]), before[:, :-1]], axis=1)


_STATE = re.compile(r"layer\.(\d+)\.(attn|mlp|out)")


def _judge_positions(
    verdict: EnvelopeVerdict,
    ref: Output,
    test: Output,
    truth: Output,
    layer_keys: list,
    name: str,
    mask: np.ndarray,
) -> None:
    """Every position of one prefill segment on its own: beyond POSITION_RATIO times the
    segment's single-rank median, explained or an outlier (see the module docstring)."""
    e_test = relative_errors(test.prefill, truth.prefill)
    scale = _position_scale(relative_errors(ref.prefill, truth.prefill), mask)
    beyond = ~(e_test <= POSITION_RATIO * scale) & mask
    if not beyond.any():
        return
    flipped = explained_positions(truth, test, ref, mask.shape)
    onsets = _onsets(ref, test, truth, layer_keys, mask)
    for row, position in np.argwhere(beyond):
        if flipped[row, position]:
            verdict.explained += 1
            continue
        ratio = float(e_test[row, position] / scale[row, position])
        onset = next(((i, p) for i, p, over in onsets if over[row, position]), (None, None))
        verdict.outliers.append(Outlier(int(row), int(position), ratio, name, *onset))


def _onsets(ref: Output, test: Output, truth: Output, layer_keys: list, mask: np.ndarray):
    """(layer, part, [B, L] beyond POSITION_RATIO) per captured state, in forward order."""
    found = []
    for layer, part, key in layer_keys:
        a, b, t = ref.layers.get(key), test.layers.get(key), truth.layers.get(key)
        if a is None or b is None or t is None or not a.shape == b.shape == t.shape:
            continue
        scale = _position_scale(relative_errors(a, t), mask)
        found.append((layer, part, ~(relative_errors(b, t) <= POSITION_RATIO * scale)))
    return found


def _position_scale(e_ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B, L]: what the single-rank run's error says rounding reaches at each position: its
    own error there (a near-tie it rounded the other way too), at least the segment's
    median."""
    return np.maximum(e_ref, max(_median(e_ref[mask]), FLOOR))
