"""The models a job keeps built across its cases: cases that share a build (architecture,
config overrides, precision, weights seed, layout or checkpoint, strategy, and whether
the model is the sharded one, the single-rank reference or its fp32 truth) reuse the
built, sharded and evaluated model instead of building it again; `harness explore` runs
hundreds of examples on one model.

A strategy may patch classes or module functions process-wide (DESIGN.md, lessons from
exo's auto_parallel), which would change what an already-built model computes. So every
kept model carries a fingerprint of the code it runs (the attributes of its modules'
classes and the globals of the modules defining them, by identity) and is reused only
while that code is unchanged; anything else is a miss and a fresh build. The cache holds
at most CAPACITY models, least recently used out first.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.nn as nn

from harness.case import Case
from harness.run.rank import forward

# One build's sharded model, its single-rank reference and truth, and one more: explore
# runs one build at a time; a suite's cases of one build are usually adjacent.
CAPACITY = 4

SHARDED, REFERENCE, TRUTH = "sharded", "reference", "truth"


@dataclass
class Built:
    model: nn.Module
    fingerprint: int
    _capture: forward.Recorder | None = field(default=None, repr=False)

    def capture(self) -> forward.Recorder:
        """The model's layer capture, installed once: it wraps the layers in place, and a
        second install would record every call twice."""
        if self._capture is None:
            self._capture = forward.install_capture(self.model)
        return self._capture


_cache: OrderedDict[tuple, Built] = OrderedDict()
builds = 0  # models built (misses) since the process started: what tests count


def build_key(case: Case, role: str, world: int) -> tuple:
    """What a model's numbers and sharding depend on; never the prompts or the scenario."""
    return (
        role,
        world,
        case.arch,
        tuple(sorted((k, repr(v)) for k, v in case.overrides.items())),
        case.dtype,
        case.quant,
        case.group_size if case.quant else None,
        case.seed,
        case.layout,
        case.checkpoint,
        case.strategy if role == SHARDED else None,
    )


def get(key: tuple, build: Callable[[], nn.Module]) -> Built:
    """The model kept under `key` when the code it runs is unchanged, else `build()`'s,
    kept. What `build` raises is not kept."""
    global builds
    kept = _cache.get(key)
    if kept is not None and fingerprint(kept.model) == kept.fingerprint:
        _cache.move_to_end(key)
        return kept
    _cache.pop(key, None)
    model = build()
    builds += 1
    kept = Built(model, fingerprint(model))
    _cache[key] = kept
    while len(_cache) > CAPACITY:
        _cache.popitem(last=False)
    return kept


def clear() -> None:
    _cache.clear()


def _defined_at_top(cls: type) -> bool:
    """A class its module names (where a process-wide patch would reach it); not a class
    made for one instance (run.rank.patching's wrappers)."""
    module = sys.modules.get(cls.__module__)
    return module is not None and getattr(module, cls.__qualname__, None) is cls


def fingerprint(model: nn.Module) -> int:
    """The identity of the code `model` runs: every attribute of its modules' classes
    (and their bases) and every global of the modules that define them."""
    classes = {
        cls
        for _, module in model.named_modules()
        for cls in type(module).__mro__
        if cls is not object and _defined_at_top(cls)
    }
    modules = {sys.modules[cls.__module__] for cls in classes}
    items = [
        (cls.__module__, cls.__qualname__, tuple((k, id(v)) for k, v in vars(cls).items()))
        for cls in classes
    ]
    items += [(m.__name__, "", tuple((k, id(v)) for k, v in vars(m).items())) for m in modules]
    return hash(tuple(sorted(items)))
