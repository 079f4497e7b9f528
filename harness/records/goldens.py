"""Goldens: stored single-rank reference outputs, content-hashed, with provenance.

One function owns the lifecycle (`check`): a missing golden is reported (and written only
when asked), a mismatch writes an `obtained` file beside the golden, a golden whose bytes
do not match the hash in its sidecar is reported as corrupt, and nothing is overwritten
unless `save(..., reason=...)` is called explicitly (`harness golden update`).

Layout: `goldens/<arch>/<case key>.npz` (prefill and decode logits, greedy tokens, per-layer
hidden-state norms) beside `<case key>.json` (hash, case, versions, platform, reason,
history). The key is the case's, never the parallel layout's.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from harness.case import Case
from harness.errors import HarnessError
from harness.paths import obtained_root
from harness.records import diagnose
from harness.records.ladder import (
    Comparison,
    Metrics,
    Tolerance,
    compare,
    first_divergent_layer,
    tolerance_for,
)
from harness.records.outputs import Output
from harness.records.provenance import environment
from harness.status import GoldenStatus

SUMMARY_PREFIX = "norms:"
FULL_LOGITS_MAX_VOCAB = 4096  # above: keep top-k logprobs per position (real models)
GOLDEN_TOP_K = 20


GOLDEN_FAILING = (GoldenStatus.MISMATCH, GoldenStatus.CORRUPT)  # a check that fails its case
GOLDEN_WARNING = (GoldenStatus.MISSING, GoldenStatus.WRITTEN)  # a check that only warns


@dataclass
class GoldenCheck:
    key: str
    status: GoldenStatus  # a check's (UNAVAILABLE: `harness golden verify` could not run it)
    detail: str | None = None
    comparison: Comparison | None = None
    recorded: dict = field(default_factory=dict)  # the sidecar's provenance


def paths(key: str, directory: Path) -> tuple[Path, Path]:
    folder = directory / key.split("-", 1)[0]  # keys are "<arch>-<precision>-<digest>"
    return folder / f"{key}.npz", folder / f"{key}.json"


def obtained_paths(key: str, directory: Path) -> tuple[Path, Path]:
    """Where a check that failed leaves the fresh reference (see `harness.paths`)."""
    npz, meta = paths(key, obtained_root(directory))
    return npz.with_name(f"{key}.obtained.npz"), meta.with_name(f"{key}.obtained.json")


def layer_norms(layers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-token L2 norms of each captured hidden state: small, and enough to name the
    first layer that moved."""
    return {
        k: np.linalg.norm(v.astype(np.float64), axis=-1).astype(np.float32)
        for k, v in layers.items()
    }


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _topk(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The GOLDEN_TOP_K token ids of every position and their logprobs."""
    ids = np.argsort(-logits, axis=-1)[..., :GOLDEN_TOP_K]
    return ids, np.take_along_axis(_log_softmax(logits), ids, axis=-1).astype(np.float32)


def _npz_bytes(output: Output, full: bool) -> bytes:
    """A golden keeps full logits for tiny vocabularies and the top-k logprobs of each
    position for real ones (full logits of a 150k vocabulary are megabytes per case)."""
    arrays = {"tokens": output.tokens}
    if full or output.prefill.shape[-1] <= FULL_LOGITS_MAX_VOCAB:
        arrays.update(prefill=output.prefill, decode=output.decode)
    else:
        for part in ("prefill", "decode"):
            arrays[f"topk_ids:{part}"], arrays[f"topk_logprobs:{part}"] = _topk(
                getattr(output, part)
            )
    arrays.update({SUMMARY_PREFIX + k: v for k, v in layer_norms(output.layers).items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


@dataclass
class Golden:
    """A stored reference: full logits, or top-k logprobs per position, and greedy tokens
    (`arrays`); per-token norms of every captured hidden state (`layers`), read from the
    stored file only when asked (a mismatch's first divergent layer): a passing check
    reads the logits and tokens alone."""

    stored: Mapping[str, np.ndarray]  # every array of the file, by its name there

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return {k: self.stored[k] for k in self.stored if not k.startswith(SUMMARY_PREFIX)}

    @functools.cached_property
    def layers(self) -> dict[str, np.ndarray]:
        return {
            k.removeprefix(SUMMARY_PREFIX): self.stored[k]
            for k in self.stored
            if k.startswith(SUMMARY_PREFIX)
        }

    @property
    def topk(self) -> bool:
        return "prefill" not in self.arrays


def hold(golden: Golden, current: Output, tol: Tolerance) -> Comparison:
    """Compare a fresh reference with a golden, whichever form the golden keeps."""
    current = Output(current.prefill, current.decode, current.tokens, {})
    if not golden.topk:
        a = golden.arrays
        return compare(Output(a["prefill"], a["decode"], a["tokens"], {}), current, tol, world=1)
    return _hold_topk(golden.arrays, current, tol)


def localize(
    comparison: Comparison, golden: Golden, norms: dict[str, np.ndarray], tol: Tolerance
) -> None:
    """A failing comparison with a golden gets the first layer that moved, from the
    golden's per-layer norms against `norms` (`layer_norms` of the current output)."""
    if comparison.passed:
        return
    moved = first_divergent_layer(golden.layers, norms, tol)
    if moved is not None:
        comparison.first_divergent_layer = moved[0]
        comparison.first_divergent_part = diagnose.PART_NAMES[moved[1]]
        comparison.diagnoses.append(diagnose.vs_golden(moved[0]))


def _hold_topk(a: dict[str, np.ndarray], current: Output, tol: Tolerance) -> Comparison:
    """Logprobs at the golden's top-k ids, position by position, and the greedy tokens;
    decode steps only while both sides fed the same tokens."""
    steps = min(a["tokens"].shape[1], current.tokens.shape[1])
    same = [np.array_equal(a["tokens"][:, s], current.tokens[:, s]) for s in range(steps)]
    diverge = same.index(False) if False in same else None
    compared = a["topk_ids:decode"].shape[0] if diverge is None else diverge
    worst, ok = {}, True
    for part, logits in (("prefill", current.prefill), ("decode", current.decode[:compared])):
        ids, ref = a[f"topk_ids:{part}"][: len(logits)], a[f"topk_logprobs:{part}"][: len(logits)]
        if logits.size == 0:
            worst[part] = 0.0
            continue
        got = np.take_along_axis(_log_softmax(logits), ids, axis=-1)
        delta = np.nan_to_num(np.abs(got - ref), nan=np.inf)
        worst[part] = float(delta.max())
        ok = ok and bool(np.all(delta <= tol.atol + tol.rtol * np.abs(ref)))
    nan = float("nan")
    top1 = float(np.mean(np.argmax(current.prefill, -1) == a["topk_ids:prefill"][..., 0]))
    finite = bool(np.all(np.isfinite(current.prefill)))
    metrics = Metrics(
        worst["prefill"],
        nan,
        nan,
        nan,
        top1,
        worst["decode"],
        diverge is None,
        diverge,
        None,
        nan,
        nan,
        nan,
        not finite,
    )
    passed = ok and diverge is None and finite
    diagnoses = [] if passed else [diagnose.golden_topk(GOLDEN_TOP_K)]
    return Comparison(passed=passed, metrics=metrics, diagnoses=diagnoses)


def sidecar_bytes(meta: dict) -> bytes:
    return json.dumps(meta, indent=1).encode()


def write_files(npz_path: Path, meta_path: Path, payload: bytes, sidecar: bytes) -> None:
    """Write a golden's file and its sidecar, each replaced atomically: a reader (the
    service, a run) never sees half a file."""
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    for path, data in ((npz_path, payload), (meta_path, sidecar)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def _meta(case: Case, payload: bytes, output: Output) -> dict:
    return {
        "key": case.key(),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "case": {k: v for k, v in case.to_dict().items() if k not in ("strategy", "tolerance")},
        "dtype": case.dtype,
        "precision": case.precision,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **environment(),
        "greedy_tokens": output.tokens.tolist(),
        "shapes": {"prefill": list(output.prefill.shape), "decode": list(output.decode.shape)},
    }


def save(case: Case, output: Output, directory: Path, reason: str | None = None) -> Path:
    """Write the golden of `case`. Overwriting an existing one needs a reason, which is
    kept in the sidecar's history."""
    npz_path, meta_path = paths(case.key(), directory)
    payload = _npz_bytes(output, full=False)
    meta = _meta(case, payload, output)
    history = []
    if meta_path.exists():
        if not reason:
            raise HarnessError(f"golden {case.key()} exists; updating it needs --reason")
        previous = json.loads(meta_path.read_text())
        history = previous.get("history", []) + [
            {
                "replaced_sha256": previous.get("sha256"),
                "replaced_created": previous.get("created"),
                "updated": meta["created"],
                "reason": reason,
                "mlx_lm_version": meta["mlx_lm_version"],
            }
        ]
    meta["history"] = history
    write_files(npz_path, meta_path, payload, sidecar_bytes(meta))
    for stale in obtained_paths(case.key(), directory):
        stale.unlink(missing_ok=True)
    return npz_path


def load(key: str, directory: Path) -> tuple[Golden, dict] | None:
    """The golden and its sidecar, None if absent; CorruptGolden if corrupt."""
    npz_path, meta_path = paths(key, directory)
    if not npz_path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        payload = npz_path.read_bytes()
    except (OSError, ValueError) as exc:
        raise CorruptGolden(f"golden {key} is corrupt: {exc}") from None
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CorruptGolden(
            f"golden {key} is corrupt: {npz_path.name} does not match the sha256 in its sidecar"
        )
    return Golden(np.load(io.BytesIO(payload))), meta


class CorruptGolden(HarnessError):
    """A golden whose bytes do not match its recorded hash (or cannot be read)."""


def check(
    case: Case,
    output: Output,
    tol: Tolerance,
    directory: Path,
    record_missing: bool = False,
) -> GoldenCheck:
    """Compare a single-rank reference with the case's golden; see the module docstring."""
    key = case.key()
    try:
        stored = load(key, directory)
    except CorruptGolden as exc:
        return GoldenCheck(key, GoldenStatus.CORRUPT, str(exc))
    if stored is None:
        if record_missing:
            save(case, output, directory)
            return GoldenCheck(key, GoldenStatus.WRITTEN, f"recorded missing golden {key}")
        return GoldenCheck(key, GoldenStatus.MISSING, f"no golden for {key}")
    golden, meta = stored
    provenance = {
        k: meta.get(k)
        for k in ("mlx_version", "mlx_lm_version", "platform", "created", "harness_sha")
    }
    comparison = hold(golden, output, tol)
    if comparison.passed:
        return GoldenCheck(key, GoldenStatus.MATCH, None, comparison, provenance)
    _write_obtained(case, output, directory)
    localize(comparison, golden, layer_norms(output.layers), tol)
    detail = (
        f"reference differs from golden {key} (recorded with mlx-lm {meta.get('mlx_lm_version')}, "
        f"mlx {meta.get('mlx_version')}): max|Δ| {comparison.metrics.max_abs:.2e}"
    )
    return GoldenCheck(key, GoldenStatus.MISMATCH, detail, comparison, provenance)


def _write_obtained(case: Case, output: Output, directory: Path) -> None:
    # Full logits, whatever the golden keeps: `diff` recomputes any comparison from it.
    payload = _npz_bytes(output, full=True)
    npz_path, meta_path = obtained_paths(case.key(), directory)
    write_files(npz_path, meta_path, payload, sidecar_bytes(_meta(case, payload, output)))


def stored_keys(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*/*.json") if not p.stem.endswith(".obtained"))


def stored_case(key: str, directory: Path) -> Case:
    """The case a golden was recorded for, rebuilt from its sidecar."""
    _, meta_path = paths(key, directory)
    try:
        meta = json.loads(meta_path.read_text())
        return Case.from_dict({**meta["case"], "strategy": "none"})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptGolden(f"golden {key} is corrupt: unreadable sidecar ({exc})") from None


@dataclass
class GoldenDiff:
    key: str
    against: str  # "obtained" (the file a failed check wrote) or "fresh" (recomputed now)
    check: GoldenCheck
    recorded: dict
    obtained: dict


def diff(key: str, fresh: Output | None, directory: Path) -> GoldenDiff:
    """The golden against its `obtained` file, else against `fresh` (a reference the caller
    recomputed, see `has_obtained`)."""
    stored = load(key, directory)
    if stored is None:
        raise HarnessError(f"no golden with key '{key}' in {directory}")
    golden, meta = stored
    case = stored_case(key, directory)
    tol = tolerance_for(case.precision, case.tolerance)
    npz_path, meta_path = obtained_paths(key, directory)
    if npz_path.exists():
        with np.load(npz_path) as data:
            obtained = Golden(dict(data))
        a, norms = obtained.arrays, obtained.layers
        current = Output(a["prefill"], a["decode"], a["tokens"], {})
        against, obtained_meta = "obtained", json.loads(meta_path.read_text())
    elif fresh is not None:
        current, norms = fresh, layer_norms(fresh.layers)
        against, obtained_meta = "fresh", environment()
    else:
        raise HarnessError(f"golden {key} has no obtained file and no fresh reference to diff")
    comparison = hold(golden, current, tol)
    localize(comparison, golden, norms, tol)
    status = GoldenStatus.MATCH if comparison.passed else GoldenStatus.MISMATCH
    return GoldenDiff(key, against, GoldenCheck(key, status, None, comparison), meta, obtained_meta)


def has_obtained(key: str, directory: Path) -> bool:
    return obtained_paths(key, directory)[0].exists()
