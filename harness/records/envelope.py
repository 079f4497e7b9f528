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
when any segment's ratio exceeds `RATIO`; the first failing layer (in forward order, in the
first failing prefill segment) localizes it.
"""

from __future__ import annotations

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
class EnvelopeVerdict:
    passed: bool
    logits: list[Segment] = field(default_factory=list)
    layers: list[tuple[int, str, Segment]] = field(default_factory=list)  # failing only

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
        verdict.logits.append(
            Segment(
                f"decode steps 1-{steps}",
                _median(relative_errors(ref.decode[:steps], truth.decode[:steps])),
                _median(relative_errors(test.decode[:steps], truth.decode[:steps])),
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
    verdict.passed = not any(s.beyond for s in verdict.logits) and not verdict.layers
    return verdict
