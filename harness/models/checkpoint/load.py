"""Loading a case's checkpoint through mlx-lm's real load path, with key coverage.

mlx-lm's loader calls `load_weights(strict=False)` under `sharded_load` (and for anyone
who passes strict=False): a checkpoint key the model does not consume is dropped, a
parameter the checkpoint lacks keeps its random initialisation, and a tensor of the
wrong shape is taken as it is, all without a word. So every load here is followed by a
coverage check of the checkpoint's keys (after the model's own sanitize) against the
model's parameters, and any difference is an error that names the keys.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from harness.case import Case
from harness.errors import HarnessError, describe
from harness.models.checkpoint.layouts import get_layout, layouts_for
from harness.models.checkpoint.read import (
    Checkpoint,
    open_checkpoint,
    read_config,
    read_weights,
)
from harness.models.checkpoint.write import quantization, write_checkpoint
from harness.strategies import resolve

# The harness never downloads: repo ids resolve in the local Hugging Face cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Strategies mlx-lm's sharded_load applies itself while loading.
LOADER_STRATEGIES = ("tp", "pp")
_SHOWN = 6


class CheckpointNotFound(HarnessError):
    """The checkpoint is absent here: the case is skipped, not failed."""


class CoverageError(HarnessError):
    """The checkpoint and the model disagree about which weights exist."""


@dataclass
class Coverage:
    path: Path
    model_type: str
    keys: int  # checkpoint tensors after the model's sanitize
    parameters: int  # parameters the model declared
    dropped: list[str] = field(default_factory=list)  # in the checkpoint, not consumed
    missing: list[str] = field(default_factory=list)  # parameters the checkpoint lacks
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint S vs model S"
    unset: list[str] = field(default_factory=list)  # in both, yet the load did not replace it

    @property
    def ok(self) -> bool:
        return not (self.dropped or self.missing or self.mismatched or self.unset)

    def verdict(self) -> str:
        """One line: all covered, or what is wrong, naming the keys."""
        if self.ok:
            return (
                f"ok: {self.path}: {self.model_type}, all {self.keys} checkpoint tensors "
                f"load into the {self.parameters} model parameters with their shapes"
            )
        problems = [
            _listed(self.dropped, "checkpoint key(s) dropped (not consumed by the model)"),
            _listed(
                self.missing, "model parameter(s) missing from the checkpoint (left at random init)"
            ),
            _listed(self.mismatched, "shape mismatch(es)"),
            _listed(self.unset, "parameter(s) left at their initial value"),
        ]
        return f"{self.path} ({self.model_type}): " + "; ".join(p for p in problems if p)


def _listed(keys: list[str], what: str) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{more}"


# ---- where a case's checkpoint lives ----------------------------------------------------

_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def resolve_checkpoint(ref: str) -> Path:
    """A path (`~` expanded) or a Hugging Face repo id found in the local cache (offline)."""
    path = Path(ref).expanduser()
    if path.exists() or not _REPO_ID.fullmatch(ref):
        if not path.exists():
            raise CheckpointNotFound(f"checkpoint '{ref}' does not exist")
        return path
    from huggingface_hub import snapshot_download

    cache = os.environ.get("HF_HUB_CACHE")
    try:
        return Path(snapshot_download(ref, local_files_only=True, cache_dir=cache))
    except Exception:  # not cached (LocalEntryNotFoundError and kin): never download
        from huggingface_hub.constants import HF_HUB_CACHE

        raise CheckpointNotFound(
            f"'{ref}' is not in the local Hugging Face cache ({cache or HF_HUB_CACHE}); "
            f"the harness never downloads: fetch it first (hf download {ref})"
        ) from None


def check_case(case: Case) -> None:
    """Layout and checkpoint fields that cannot work: HarnessError (a suite mistake)."""
    if case.layout and case.checkpoint:
        raise HarnessError(f"{case.label()}: give a layout or a checkpoint, not both")
    if case.layout:
        layout = get_layout(case.layout)
        bits, _ = quantization(layout, case.quant)
        if bits != case.quant:
            raise HarnessError(
                f"{case.label()}: layout '{layout.name}' holds {bits}-bit weights; "
                f"give the case precision 'q{bits}'"
            )


def skip_reason(case: Case) -> str | None:
    """Why a layout or checkpoint case cannot run here (absent checkpoint, a layout the
    architecture does not have), or None; suite mistakes raise HarnessError."""
    check_case(case)
    if case.layout and case.layout not in layouts_for(case.arch):
        known = ", ".join(layouts_for(case.arch))
        return f"'{case.arch}' has no '{case.layout}' layout; its layouts: {known}"
    if case.checkpoint:
        try:
            resolve_checkpoint(case.checkpoint)
        except CheckpointNotFound as exc:
            return str(exc)
    return None


_WEIGHT_FIELDS = ("arch", "layout", "seed", "quant", "group_size", "dtype", "overrides")
_GENERATED: dict[str, Path] = {}
_ROOT: list[Path] = []  # this process's folder of generated checkpoints, made on first use


def _generated_root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="harness-checkpoints-")))
        atexit.register(shutil.rmtree, _ROOT[0], ignore_errors=True)
    return _ROOT[0]


def generated_checkpoint(case: Case) -> Path:
    """The case's layout written once per process (deterministic, so every rank's copy
    is identical), keyed by everything the weights depend on."""
    ident = {name: getattr(case, name) for name in _WEIGHT_FIELDS}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    if key not in _GENERATED:
        out = _generated_root() / f"{case.arch}-{case.layout}-{key}"
        write_checkpoint(
            case.arch,
            case.layout,
            out,
            case.seed,
            case.quant,
            case.group_size,
            dtype=case.dtype,
            overrides=case.overrides,
        )
        _GENERATED[key] = out
    return _GENERATED[key]


def case_config(case: Case) -> dict:
    """A checkpoint case's config.json, as the preflight rules read it (the rest of the
    directory is checked when the case loads, so a broken shard costs only its case)."""
    return read_config(resolve_checkpoint(case.checkpoint))


def case_checkpoint(case: Case) -> Path:
    check_case(case)
    if case.checkpoint:
        return resolve_checkpoint(case.checkpoint)
    return generated_checkpoint(case)


# ---- loading ------------------------------------------------------------------------------


def load_checked(path: Path) -> tuple[nn.Module, Coverage]:
    """mlx-lm's load_model (lazy, strict=False as sharded_load does), then the coverage
    check against the checkpoint; raises CoverageError naming the keys."""
    return _checked(open_checkpoint(path))


def _checked(checkpoint: Checkpoint) -> tuple[nn.Module, Coverage]:
    model, coverage = _load_and_cover(checkpoint)
    if not coverage.ok:
        raise CoverageError(coverage.verdict())
    return model, coverage


def check_checkpoint(path: str) -> Coverage:
    """Load a checkpoint (path or cached repo id) through mlx-lm and check its coverage;
    returns the coverage whether or not it is complete."""
    _, coverage = _load_and_cover(open_checkpoint(resolve_checkpoint(path)))
    return coverage


def _load_and_cover(checkpoint: Checkpoint) -> tuple[nn.Module, Coverage]:
    model, declared = _mlx_lm_call("load", checkpoint, _load_model, checkpoint.path)
    weights = read_weights(checkpoint)
    if hasattr(model, "sanitize"):
        weights = _mlx_lm_call("sanitize", checkpoint, model.sanitize, weights)
    return model, coverage_of(model, declared, weights, checkpoint)


def _load_model(path: Path) -> tuple[nn.Module, dict[str, mx.array]]:
    """load_model, and the parameters the model declared before the weights went in:
    strict=False replaces a parameter whatever its shape, so the loaded model no longer
    says what it expected."""
    from harness.models import mlx_lm_api

    declared: dict[str, mx.array] = {}

    def recording_classes(config):
        model_cls, args_cls = mlx_lm_api.model_classes(config)

        def load_weights(self, weights, strict=True):
            declared.update(tree_flatten(self.parameters()))
            return model_cls.load_weights(self, weights, strict=strict)

        return type(model_cls.__name__, (model_cls,), {"load_weights": load_weights}), args_cls

    model = mlx_lm_api.load_model(path, get_model_classes=recording_classes)
    return model, declared


def _mlx_lm_call(what: str, checkpoint: Checkpoint, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except HarnessError:
        raise
    except KeyError as exc:
        # sanitize() reaching for a tensor the checkpoint lacks (a per-expert key, ...).
        raise CoverageError(
            f"mlx-lm could not {what} {checkpoint.path} ({checkpoint.model_type}): its "
            f"sanitize() needs {exc}, which the checkpoint does not hold"
        ) from None
    except Exception as exc:
        raise HarnessError(
            f"mlx-lm could not {what} {checkpoint.path} ({checkpoint.model_type}): {describe(exc)}"
        ) from None


def coverage_of(
    model: nn.Module, declared: dict[str, mx.array], weights: dict[str, mx.array], checkpoint
) -> Coverage:
    """The checkpoint's tensors (after the model's sanitize) against the parameters the
    model declared, and whether each one really was replaced by the load."""
    loaded = dict(tree_flatten(model.parameters()))
    coverage = Coverage(checkpoint.path, checkpoint.model_type, len(weights), len(declared))
    coverage.dropped = sorted(set(weights) - set(declared))
    coverage.missing = sorted(set(declared) - set(weights))
    shared = sorted(set(weights) & set(declared))
    coverage.mismatched = [
        f"{k} checkpoint {list(weights[k].shape)} vs model {list(declared[k].shape)}"
        for k in shared
        if weights[k].shape != declared[k].shape
    ]
    coverage.unset = [k for k in shared if loaded.get(k) is declared[k]]
    return coverage


def sharded_by_loader(case: Case) -> bool:
    """Whether load_for_case already applied the case's strategy (built-in tp / pp)."""
    return bool(case.layout or case.checkpoint) and case.strategy in LOADER_STRATEGIES


def load_for_case(case: Case, group) -> nn.Module:
    """The case's model from its checkpoint, through mlx-lm's loaders.

    group None: the unsharded reference (load_model). A built-in tp / pp strategy loads
    through `sharded_load`, so a rank reads only what it needs; an external strategy gets
    the full model and is applied by the caller.
    """
    checkpoint = open_checkpoint(case_checkpoint(case))
    model, _ = _checked(checkpoint)
    if group is not None and case.strategy in LOADER_STRATEGIES:
        if checkpoint.indexed:
            del model  # sharded_load loads its own, lazily, and evaluates only its shard
            return _mlx_lm_call(
                "shard-load", checkpoint, _sharded_load, checkpoint.path, case.strategy, group
            )
        # sharded_load's pipeline needs the shard index; a single-file checkpoint has
        # nothing to split, so the full model is sharded the way sharded_load would.
        model = resolve(case.strategy).apply(model, group)
    mx.eval(model.parameters())
    return model


def _sharded_load(path: Path, strategy: str, group) -> nn.Module:
    from harness.models import mlx_lm_api

    groups = {"tensor_group": group} if strategy == "tp" else {"pipeline_group": group}
    return mlx_lm_api.sharded_load(path, **groups)
