"""In-process ranks: a stand-in group and a scheduler that replays the collectives.

`simulate(fn, ranks)` runs every rank of an SPMD function in this process. mlx's sharding
helpers only call `group.rank()` / `group.size()`, so a `SimGroup` stands in for the real
group, and `mx.distributed`'s collectives are replaced while the simulation runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx


class SimGroup:
    """Stand-in for `mx.distributed.Group` inside `simulate`: rank `r` of `n`."""

    def __init__(self, rank: int, size: int):
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"SimGroup(rank={self._rank}, size={self._size})"


class _Blocked(BaseException):
    """A simulated rank needs a value other ranks have not produced yet.

    BaseException, so that code under test catching Exception does not swallow it.
    """


_REDUCE = {
    "all_sum": lambda xs: functools.reduce(mx.add, xs),
    "all_max": lambda xs: functools.reduce(mx.maximum, xs),
    "all_min": lambda xs: functools.reduce(mx.minimum, xs),
    "all_gather": lambda xs: mx.concatenate(xs, axis=0),
}


class _Simulation:
    """Collective state of one `simulate` call.

    Ranks run one after another, each from the start, as often as needed: a rank runs
    until it needs a result that is not known yet (it leaves its contribution and is
    stopped), and a later pass replays it with that result. Collectives match by their
    order on each rank, sends and receives by (source, destination, count).
    """

    def __init__(self, size: int):
        self.size = size
        self.rank = 0
        self.counters: defaultdict = defaultdict(int)
        self.collectives: dict[int, dict[int, tuple[str, mx.array]]] = {}
        self.mail: dict[tuple[int, int, int], mx.array] = {}
        self.waiting: dict[int, str] = {}

    def progress(self) -> int:
        return sum(len(c) for c in self.collectives.values()) + len(self.mail)

    def run(self, fn: Callable[[SimGroup], Any], rank: int) -> Any:
        self.rank, self.counters = rank, defaultdict(int)
        return fn(SimGroup(rank, self.size))

    def collective(self, op: str, x: mx.array) -> mx.array:
        index = self.counters["collective"]
        self.counters["collective"] += 1
        slot = self.collectives.setdefault(index, {})
        if self.rank not in slot:
            mx.eval(x)
            slot[self.rank] = (op, x)
        if len(slot) < self.size:
            self.waiting[self.rank] = f"{op} (collective #{index})"
            raise _Blocked
        calls = {(o, tuple(a.shape), a.dtype) for o, a in slot.values()}
        if len(calls) > 1:
            seen = ", ".join(
                f"rank {r}: {o}{tuple(a.shape)} {a.dtype}" for r, (o, a) in sorted(slot.items())
            )
            raise AssertionError(f"ranks disagree on collective #{index}: {seen}")
        return _REDUCE[op]([slot[r][1] for r in range(self.size)])

    def send(self, x: mx.array, dst: int) -> mx.array:
        key = (self.rank, dst, self.counters["send", dst])
        self.counters["send", dst] += 1
        if key not in self.mail:
            mx.eval(x)
            self.mail[key] = x
        return x

    def recv(self, shape: tuple, dtype: mx.Dtype, src: int) -> mx.array:
        key = (src, self.rank, self.counters["recv", src])
        self.counters["recv", src] += 1
        if key not in self.mail:
            self.waiting[self.rank] = f"recv from rank {src}"
            raise _Blocked
        got = self.mail[key]
        if tuple(got.shape) != tuple(shape) or got.dtype != dtype:
            raise AssertionError(
                f"rank {self.rank} receives {tuple(shape)} {dtype} from rank {src}, "
                f"which sent {tuple(got.shape)} {got.dtype}"
            )
        return got


_active: list[_Simulation] = []


def _simulated(group: Any) -> _Simulation | None:
    """The simulation serving `group`: None outside `simulate` or for a real group.
    Inside `simulate`, no group means the global one, which is the simulated world."""
    if _active and (group is None or isinstance(group, SimGroup)):
        return _active[-1]
    return None


def _patch_distributed() -> tuple[dict[str, Callable], dict[str, Callable]]:
    """The real `mx.distributed` functions, and replacements that serve simulated groups."""
    real = {n: getattr(mx.distributed, n) for n in ("init", "send", "recv", "recv_like", *_REDUCE)}

    def reduce_op(op: str) -> Callable:
        def call(x, *, group=None, stream=None):
            sim = _simulated(group)
            if sim is None:
                return real[op](x, group=group, stream=stream)
            return sim.collective(op, x)

        return call

    def init(*args, **kwargs):
        if _active:
            return SimGroup(_active[-1].rank, _active[-1].size)
        return real["init"](*args, **kwargs)

    def send(x, dst, *, group=None, stream=None):
        sim = _simulated(group)
        return real["send"](x, dst, group=group, stream=stream) if sim is None else sim.send(x, dst)

    def recv(shape, dtype, src, *, group=None, stream=None):
        sim = _simulated(group)
        if sim is None:
            return real["recv"](shape, dtype, src, group=group, stream=stream)
        return sim.recv(tuple(shape), dtype, src)

    def recv_like(x, src, *, group=None, stream=None):
        sim = _simulated(group)
        if sim is None:
            return real["recv_like"](x, src, group=group, stream=stream)
        return sim.recv(tuple(x.shape), x.dtype, src)

    patched = {op: reduce_op(op) for op in _REDUCE}
    patched.update(init=init, send=send, recv=recv, recv_like=recv_like)
    return real, patched


@contextlib.contextmanager
def _simulating(sim: _Simulation) -> Iterator[None]:
    # mlx's layers look `mx.distributed.all_sum` etc. up at call time, so replacing the
    # module attributes reaches them; real groups still go to the real functions.
    if _active:
        raise RuntimeError("simulate() does not nest")
    real, patched = _patch_distributed()
    for name, fn in patched.items():
        setattr(mx.distributed, name, fn)
    _active.append(sim)
    try:
        yield
    finally:
        _active.pop()
        for name, fn in real.items():
            setattr(mx.distributed, name, fn)


def simulate(fn: Callable[[SimGroup], Any], ranks: int) -> list[Any]:
    """Run the SPMD function `fn(group)` as every rank of a `ranks`-rank world, in this
    process; the ranks' return values in rank order. An exception on any rank propagates
    (noted with the rank); ranks that can never proceed raise AssertionError (deadlock)."""
    sim = _Simulation(ranks)
    results: dict[int, Any] = {}
    with _simulating(sim):
        while len(results) < ranks:
            before = (sim.progress(), len(results))
            for rank in range(ranks):
                if rank in results:
                    continue
                try:
                    results[rank] = sim.run(fn, rank)
                    sim.waiting.pop(rank, None)
                except _Blocked:
                    pass
                except Exception as error:
                    if ranks > 1:
                        error.add_note(f"on simulated rank {rank} of {ranks}")
                    raise
            if (sim.progress(), len(results)) == before:
                stuck = "; ".join(f"rank {r} waits in {w}" for r, w in sorted(sim.waiting.items()))
                raise AssertionError(f"deadlock: {stuck}")
    return [results[r] for r in range(ranks)]
