"""A world of one rank, for the single-rank references a multi-rank job computes.

Unsharded model code may still talk to the world: mlx-lm 0.30's glm4_moe all-gathers its
hidden states over the default group in every forward, sharded or not. On a rank of a
2-rank job that collective would meet whatever the other rank is doing (a different case's
reference) and scramble both. Inside `solo_world()` the default group is a group of one:
`init()` says so, and collectives on it return their input, as they do on one rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx

_IDENTITY = ("all_sum", "all_gather", "all_max", "all_min", "sum_scatter")
_POINT_TO_POINT = ("send", "recv", "recv_like")


class _Solo:
    """Stands in for the world group: rank 0 of 1."""

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 1


@contextmanager
def solo_world() -> Iterator[None]:
    solo, dist = _Solo(), mx.distributed
    saved = {name: getattr(dist, name) for name in (*_IDENTITY, *_POINT_TO_POINT, "init")}

    def identity(name):
        real = saved[name]

        def call(x, *args, group=None, **kwargs):
            if group is None or group is solo:
                return x
            return real(x, *args, group=group, **kwargs)

        return call

    def alone(name):
        real = saved[name]

        def call(*args, group=None, **kwargs):
            if group is None or group is solo:
                raise RuntimeError(f"mx.distributed.{name} in a single-rank run: no peer exists")
            return real(*args, group=group, **kwargs)

        return call

    for name in _IDENTITY:
        setattr(dist, name, identity(name))
    for name in _POINT_TO_POINT:
        setattr(dist, name, alone(name))
    dist.init = lambda *args, **kwargs: solo
    try:
        yield
    finally:
        for name, real in saved.items():
            setattr(dist, name, real)
