"""The models a job keeps built across its cases: cases that share a build (architecture,
config overrides, precision, weights seed, layout or checkpoint, strategy, and whether
the model is the sharded one, the single-rank reference or its fp32 truth) reuse the
built, sharded and evaluated model instead of building it again; `harness explore` runs
hundreds of examples on one model.

A strategy may patch classes or module functions process-wide (exo's auto_parallel
does), which would change what an already-built model computes. So every
kept model carries a fingerprint of the code it runs (the attributes of its modules'
classes and the globals of the modules defining them, by identity) and is reused only
while that code is unchanged; anything else is a miss and a fresh build.

Sharded models are kept apart from single-rank ones: every rank builds the same sharded
models in the same order, but each computes its own share of the references, so one pool
for both would keep different models on different ranks. Each pool holds at most
CAPACITY models, least recently used out first.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field

import mlx.nn as nn

from harness.case import Case
from harness.run.rank import forward

# Two builds per pool: explore runs one build at a time, a suite's cases of one build are
# usually adjacent, and a single-rank build has its reference and its truth.
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


_pools: dict[bool, OrderedDict[tuple, Built]] = {True: OrderedDict(), False: OrderedDict()}
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


def _pool(key: tuple) -> OrderedDict[tuple, Built]:
    return _pools[key[0] == SHARDED]


def kept(key: tuple) -> Built | None:
    """The model kept under `key` if the code it runs is unchanged since it was built."""
    pool = _pool(key)
    found = pool.get(key)
    if found is None or fingerprint(found.model) != found.fingerprint:
        pool.pop(key, None)
        return None
    pool.move_to_end(key)
    return found


def keep(key: tuple, model: nn.Module) -> Built:
    """Keep a freshly built `model` under `key` (counted in `builds`)."""
    global builds
    builds += 1
    pool = _pool(key)
    pool[key] = Built(model, fingerprint(model))
    while len(pool) > CAPACITY:
        pool.popitem(last=False)
    return pool[key]


def holds(key: tuple) -> bool:
    return key in _pool(key)


def clear() -> None:
    for pool in _pools.values():
        pool.clear()


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
