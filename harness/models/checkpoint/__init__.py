"""Checkpoints: tiny models written in the layouts real checkpoints use, and real
checkpoints (a local path or the local Hugging Face cache, offline), loaded through
mlx-lm's own load path with a key coverage check.

- `layouts`: the layout registry and, per family, the inverse of its sanitize();
- `write`: `write_checkpoint` (config, sharded safetensors + index, a tiny tokenizer);
- `read`: opening a directory safely (bad input is one sentence naming the file);
- `load`: `load_for_case` (load_model / sharded_load), coverage, `skip_reason`.
"""

from harness.models.checkpoint.layouts import LAYOUTS, get_layout, layouts_for, to_layout
from harness.models.checkpoint.load import (
    CheckpointNotFound,
    Coverage,
    CoverageError,
    case_config,
    check_checkpoint,
    load_for_case,
    sharded_by_loader,
    skip_reason,
)
from harness.models.checkpoint.write import source_model, write_checkpoint

__all__ = [
    "LAYOUTS",
    "CheckpointNotFound",
    "Coverage",
    "case_config",
    "CoverageError",
    "check_checkpoint",
    "get_layout",
    "layouts_for",
    "load_for_case",
    "sharded_by_loader",
    "skip_reason",
    "source_model",
    "to_layout",
    "write_checkpoint",
]
