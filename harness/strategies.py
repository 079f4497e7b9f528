"""Sharding strategies: how a model is split across a group of ranks.

Built in: `none`, `tp` (mlx-lm's `model.shard(group)`) and `pp` (mlx-lm's
`model.model.pipeline(group)`). External: `package.module:function` or
`path/to/file.py:function`, a callable `fn(model, group)` that shards in place or returns
the sharded model. External strategies are how users test their own sharding code.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.nn as nn

from harness.errors import HarnessError

ShardFn = Callable[[nn.Module, object], "nn.Module | None"]


def _none(model: nn.Module, group) -> None:
    return None


def _tp(model: nn.Module, group) -> None:
    model.shard(group)


def _pp(model: nn.Module, group) -> None:
    model.model.pipeline(group)


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: ShardFn
    # Which built-in capability of the model it relies on ("tp", "pp") or None.
    requires: str | None = None

    @property
    def external(self) -> bool:
        return self.name not in BUILTIN

    def apply(self, model: nn.Module, group) -> nn.Module:
        """Shard `model` for `group`; returns the model to run (the same or a new one)."""
        returned = self.fn(model, group)
        return model if returned is None else returned


BUILTIN: dict[str, Strategy] = {
    "none": Strategy("none", _none),
    "tp": Strategy("tp", _tp, requires="tp"),
    "pp": Strategy("pp", _pp, requires="pp"),
}


def normalize(name: str) -> str:
    """Make a file-based external strategy absolute, so every rank resolves the same file."""
    if name in BUILTIN or ":" not in name:
        return name
    target, _, attr = name.rpartition(":")
    if target.endswith(".py"):
        return f"{Path(target).resolve()}:{attr}"
    return name


def resolve(name: str) -> Strategy:
    """A strategy by name; unknown names and broken external paths are one-line errors."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise HarnessError(
            f"unknown strategy '{name}'; known: {', '.join(BUILTIN)}, "
            "or an external 'package.module:function' / 'path/to/file.py:function'"
        )
    target, _, attr = name.rpartition(":")
    module = _load_file(target) if target.endswith(".py") else _import_module(target)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise HarnessError(f"strategy '{name}': '{target}' has no callable '{attr}'")
    return Strategy(name, fn)


def _import_module(dotted: str):
    try:
        return importlib.import_module(dotted)
    except Exception as exc:  # any import-time failure of user code is a user problem
        raise HarnessError(f"strategy module '{dotted}' does not import: {exc}") from None


def _load_file(path: str):
    file = Path(path)
    if not file.is_file():
        raise HarnessError(f"strategy file '{path}' does not exist")
    module_name = f"harness_external_{abs(hash(str(file.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise HarnessError(f"strategy file '{path}' does not import: {exc}") from None
    sys.modules[module_name] = module
    return module
