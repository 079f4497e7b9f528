"""The one seam between the harness and mlx-lm's loading API, across its releases.

The harness runs against every mlx-lm release back to 0.30.0 (bisecting needs that), and
their APIs differ: `load_model(..., trust_remote_code=)` and `sharded_load(...,
tokenizer_config=)` appear only in 0.32; `_get_classes` is private and logs an error for
an unknown model type before raising. Every call into those goes through here, so a
release that lacks something is one place to read, never a TypeError deep in a case.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the zoo imports this module and must not load mlx to list itself
    import mlx.nn as nn


class MissingModelType(ValueError):
    """The installed mlx-lm has no module for this model type."""


def version() -> str:
    import mlx_lm

    return getattr(mlx_lm, "__version__", "unknown")


def model_classes(config: Mapping[str, Any]) -> tuple[type[nn.Module], type]:
    """(Model, ModelArgs) through mlx-lm's own model_type resolution (MODEL_REMAPPING,
    then `mlx_lm.models.<type>`, which `harness.models.impl` may have replaced)."""
    # Imported here: mlx_lm.utils takes ~1.5 s to import, which listing the zoo never needs.
    from mlx_lm.utils import _get_classes

    # It logs "Model type X not supported." at ERROR before raising; the caller words it.
    root = logging.getLogger()
    level, root.level = root.level, logging.CRITICAL
    try:
        return _get_classes(dict(config))
    except ValueError as exc:
        raise MissingModelType(
            f"mlx-lm {version()} has no model_type '{config.get('model_type')}'"
        ) from exc
    finally:
        root.level = level


def _accepts(fn: Callable, name: str) -> bool:
    parameters = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def load_model(path: Path, get_model_classes: Callable) -> nn.Module:
    """mlx-lm's load_model, lazy and strict=False as sharded_load loads, never running
    checkpoint code: releases before 0.32 have no trust_remote_code and run none."""
    from mlx_lm.utils import load_model as mlx_lm_load_model

    kwargs: dict[str, Any] = {"lazy": True, "strict": False, "get_model_classes": get_model_classes}
    if _accepts(mlx_lm_load_model, "trust_remote_code"):
        kwargs["trust_remote_code"] = False
    model, _ = mlx_lm_load_model(path, **kwargs)
    return model


def sharded_load(path: Path, **groups) -> nn.Module:
    """mlx-lm's sharded_load with `tensor_group=` or `pipeline_group=`.

    Its default turns trust_remote_code on for the tokenizer; where it takes a
    tokenizer_config (0.32 on) that is turned off here, and before that the checkpoint was
    already refused by `harness.models.checkpoint.read` if it maps a tokenizer to code.
    Its own trust_remote_code (model code, 0.32 on) is off by default."""
    from mlx_lm.utils import sharded_load as mlx_lm_sharded_load

    kwargs: dict[str, Any] = dict(groups)
    if _accepts(mlx_lm_sharded_load, "tokenizer_config"):
        kwargs["tokenizer_config"] = {"trust_remote_code": False}
    model, _ = mlx_lm_sharded_load(str(path), **kwargs)
    return model
