"""Opening a checkpoint directory safely: every problem is one sentence naming the file.

Checked before mlx-lm sees the directory: config.json and its model_type, custom code the
loader would run, pickle-only weights (refused, never unpickled), the shard index against
the files on disk, and every safetensors header against its file's size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from harness.errors import HarnessError
from harness.models.mlx_lm_api import model_classes

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX = "model.safetensors.index.json"
# mlx-lm loads every file matching this pattern, whatever the index says.
WEIGHT_GLOB = "model*.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]
    files: tuple[Path, ...]
    indexed: bool  # has model.safetensors.index.json (sharded_load's pipeline needs it)
    total_bytes: int

    @property
    def model_type(self) -> str:
        return self.config["model_type"]


def open_checkpoint(path: Path) -> Checkpoint:
    """Validate a checkpoint directory; a HarnessError names what is wrong and where."""
    path = Path(path)
    if not path.is_dir():
        raise HarnessError(f"checkpoint '{path}' is not a directory")
    config = read_config(path)
    _refuse_custom_code(path, config)
    _model_type(path, config)
    files = _weight_files(path)
    indexed = (path / INDEX).is_file()
    headers = {f.name: _header(f) for f in files}
    if indexed:
        _check_index(path, headers)
    total = sum(f.stat().st_size for f in files)
    return Checkpoint(path, config, tuple(files), indexed, total)


def read_weights(checkpoint: Checkpoint) -> dict[str, mx.array]:
    """Every tensor of the checkpoint, lazily (nothing is read until evaluated)."""
    weights: dict[str, mx.array] = {}
    for file in checkpoint.files:
        weights.update(mx.load(str(file)))
    return weights


def _json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"'{file}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"'{file}' does not hold a JSON object")
    return data


def read_config(path: Path) -> dict:
    """A checkpoint's config.json, given the checkpoint directory or the file itself."""
    path = Path(path)
    file = path if path.is_file() else path / "config.json"
    if not file.is_file():
        raise HarnessError(f"'{path}' has no config.json, so it is not a model checkpoint")
    config = _json(file)
    if "model_type" not in config:
        raise HarnessError(f"'{file}' names no model_type")
    return config


def _refuse_custom_code(path: Path, config: dict) -> None:
    # Only code a loader would run: mlx-lm imports config.json's model_file, and
    # sharded_load builds the tokenizer with trust_remote_code=True unless told otherwise,
    # which runs an AutoTokenizer auto_map. An auto_map for AutoConfig / AutoModel is
    # transformers' PyTorch code, which mlx-lm never imports (mlx-community's DeepSeek-V3
    # conversions keep one), so it is allowed.
    if "model_file" in config:
        raise HarnessError(
            f"'{path}/config.json' asks to run custom model code ({config['model_file']!r}); "
            "the harness never runs checkpoint code (trust_remote_code is off)"
        )
    tokenizer_config = path / "tokenizer_config.json"
    sources = [(path / "config.json", config)]
    if tokenizer_config.is_file():
        sources.append((tokenizer_config, _json(tokenizer_config)))
    for file, data in sources:
        auto_map = data.get("auto_map") or {}
        code = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else None
        if code:
            raise HarnessError(
                f"'{file}' maps AutoTokenizer to custom code ({code!r}); the harness never "
                "runs checkpoint code (trust_remote_code is off)"
            )


def _model_type(path: Path, config: dict) -> None:
    model_type = config.get("model_type")
    if not model_type:
        raise HarnessError(f"'{path}/config.json' has no model_type")
    try:
        model_classes(config)
    # A model module may even call sys.exit at import (mlx_lm.models.olmo does).
    except (Exception, SystemExit):
        import mlx_lm

        raise HarnessError(
            f"'{path}/config.json' names model_type '{model_type}', which the installed "
            f"mlx-lm {mlx_lm.__version__} does not implement"
        ) from None


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob(WEIGHT_GLOB))
    if files:
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise HarnessError(
            f"'{path}' holds only pickle weights ({', '.join(pickles)}), which the harness "
            "refuses to unpickle; convert them to safetensors"
        )
    raise HarnessError(f"'{path}' has no {WEIGHT_GLOB} weight files")


def _header(file: Path) -> dict:
    """The safetensors header, checked against the file: a truncated shard fails here."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or length > size - 8:
            raise HarnessError(f"'{file}' is corrupt: not a safetensors file (bad header)")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HarnessError(f"'{file}' is corrupt: its safetensors header is not JSON") from None
    header.pop("__metadata__", None)
    data = size - 8 - length
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if end > data:
        raise HarnessError(
            f"'{file}' is truncated: its header needs {end} bytes of tensor data, "
            f"the file holds {data}"
        )
    return header


def _check_index(path: Path, headers: dict[str, dict]) -> None:
    weight_map = _json(path / INDEX).get("weight_map")
    if not isinstance(weight_map, dict):
        raise HarnessError(f"'{path / INDEX}' has no weight_map")
    for name in sorted(set(weight_map.values())):
        if name not in headers:
            raise HarnessError(f"'{path / INDEX}' names shard '{name}', which is missing")
    for name in sorted(set(headers) - set(weight_map.values())):
        raise HarnessError(
            f"'{path / name}' is not in '{INDEX}', but mlx-lm loads every {WEIGHT_GLOB}: "
            "a stale shard would silently override weights"
        )
    for key, name in weight_map.items():
        if key not in headers[name]:
            raise HarnessError(f"'{path / INDEX}' puts '{key}' in '{name}', which does not hold it")
