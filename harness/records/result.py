"""A case's result and the one flattening of a result into a row: the store writes it and
the renderer draws the live table from it. Its statuses: `harness.status.CaseStatus`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from harness.case import Case
from harness.records.goldens import GoldenCheck
from harness.records.ladder import Comparison
from harness.records.outputs import Output, Timings
from harness.status import FAILING, CaseStatus


@dataclass
class CaseResult:
    index: int
    case: Case
    ranks: int
    status: CaseStatus
    reason: str | None = None
    comparisons: dict[int, Comparison] = field(default_factory=dict)
    diagnoses: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reference_timings: Timings | None = None
    rank_timings: dict[int, dict] = field(default_factory=dict)
    duration: float = 0.0
    golden: GoldenCheck | None = None
    reference: str | None = None  # what the case was held against (single-rank, golden, pp)
    # Where a failing scenario case first went wrong, on the first failing rank
    # (records.scenario.locate): what a search reads.
    location: dict | None = None
    # Every rank's output, only when the run was asked to keep them; never stored.
    outputs: dict[int, Output] = field(default_factory=dict, repr=False)

    @property
    def worst(self) -> Comparison | None:
        """The comparison of the rank that did worst (largest max |Δ|)."""
        if not self.comparisons:
            return None
        return max(
            self.comparisons.values(), key=lambda c: np.nan_to_num(c.metrics.max_abs, nan=np.inf)
        )

    @property
    def failed(self) -> bool:
        return self.status in FAILING


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


METRIC_COLUMNS = ("max_abs", "rel", "cosine", "kl_max", "top1", "decode_max_abs")


def case_row(result: CaseResult) -> dict:
    """A result as one `cases` row (without run_id): what the store writes and the table shows."""
    case, worst, ref = result.case, result.worst, result.reference_timings
    sharded = result.rank_timings.get(0) or next(iter(result.rank_timings.values()), None)
    row = {
        "idx": result.index,
        "case_key": case.key(),
        "label": case.label(),
        "arch": case.arch,
        "variant": case.variant,
        "strategy": case.strategy,
        "ranks": result.ranks,
        "dtype": case.dtype,
        "quant": case.quant,
        "precision": case.precision,
        "seed": case.seed,
        "status": result.status,
        "reason": result.reason,
        "diagnoses": json.dumps(result.diagnoses),
        "warnings": json.dumps(result.warnings),
        "metrics": json.dumps({r: c.to_dict() for r, c in result.comparisons.items()}),
        "timings": json.dumps(
            {"reference": ref.to_dict() if ref else None, "ranks": result.rank_timings}
        ),
        "duration_s": result.duration,
        "finished": now(),
        "case": json.dumps(case.to_dict()),
        "reference": result.reference,
        "location": json.dumps(result.location) if result.location is not None else None,
        **{k: None for k in METRIC_COLUMNS},
        "tokens_match": None,
        "first_divergent_layer": None,
        "first_divergent_part": None,
        "golden": None,
        "golden_max_abs": None,
        "prefill_tok_s": None,
        "decode_tok_s": None,
        "peak_memory": None,
        "ref_prefill_tok_s": None,
        "ref_decode_tok_s": None,
        "ref_peak_memory": None,
    }
    if worst is not None:
        m = worst.metrics
        row.update({k: getattr(m, k) for k in METRIC_COLUMNS})
        row["tokens_match"] = int(m.tokens_match)
        row["first_divergent_layer"] = worst.first_divergent_layer
        row["first_divergent_part"] = worst.first_divergent_part
    if result.golden is not None:
        row["golden"] = result.golden.status
        if result.golden.comparison is not None:
            row["golden_max_abs"] = result.golden.comparison.metrics.max_abs
    if sharded:
        row.update(
            prefill_tok_s=sharded["prefill_tok_s"],
            decode_tok_s=sharded["decode_tok_s"],
            peak_memory=sharded["peak_memory"],
        )
    if ref:
        row.update(
            ref_prefill_tok_s=ref.prefill_tok_s,
            ref_decode_tok_s=ref.decode_tok_s,
            ref_peak_memory=ref.peak_memory,
        )
    return row
