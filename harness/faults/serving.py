"""Bugs along the dimensions of serving (README, "Scenarios"), each
starting from mlx-lm's correct tensor parallel: a reduction skipped only for batch rows
past the second, or only in the decode step whose token lands on a cache position that
is a multiple of 256 (where mlx-lm's KV cache grows), state corrupted for the rows left
in a batch after a request leaves it (the batch cache's `filter`), and a reused prefix
read wrongly (the trim of a sharded cache off by one). The fixed shapes of `harness run
--suite moe` (batches of at most 2 rows, decodes that never reach position 256, no
BatchGenerator) pass every one; a scenario that reaches it fails (`catalog.py` names
the smallest one).

The cache faults swap the class of the batch caches layer 2's attention is given (this
model's caches only, no class changes process-wide): their `filter` or their extracted
caches' `trim` goes wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache

from harness.faults import parts
from harness.faults.shape_bugs import WRONG, argument, attention
from harness.run.rank.patching import wrap_call
from harness.scenario import KV_STEP

ROWS_KEPT = 2  # rows the batch-width fault still reduces: a buffer sized for two


def _moe_block(model):
    block = parts.feedforward(parts.layer(model, parts.MLP_LAYER))
    if not hasattr(block, "sharding_group"):
        raise ValueError(f"layer {parts.MLP_LAYER}'s {type(block).__name__} reduces no output")
    return block


def _unreduced_where(block, rows: Callable[[mx.array], mx.array | None]) -> None:
    """Layer 1's MoE block skips its all_sum for the rows `rows(x)` marks ([B] booleans,
    or None for none): those rows go on with this rank's partial sum."""

    def around(call, x, *args, **kwargs):
        full = call(x, *args, **kwargs)
        wrong = rows(x)
        if wrong is None:
            return full
        group, block.sharding_group = block.sharding_group, None
        try:
            partial = call(x, *args, **kwargs)
        finally:
            block.sharding_group = group
        return mx.where(wrong[:, None, None], partial, full)

    wrap_call(block, around)


def wide_batch(model, group):
    """Layer 1's MoE output is all-summed for the first two rows of a batch only, as a
    reduction buffer sized for an earlier batch of two: rows 2 and on keep a partial sum."""
    model.shard(group)

    def rows(x):
        B = x.shape[0]
        return mx.arange(B) >= ROWS_KEPT if B > ROWS_KEPT else None

    _unreduced_where(_moe_block(model), rows)


def cache_growth(model, group):
    """Layer 1's MoE output is not all-summed in a one-token call whose token lands on a
    cache position that is a multiple of 256, where mlx-lm's KV cache grows its buffers
    (a reduction that races the reallocation): only the rows decoding there go wrong."""
    model.shard(group)
    decoder = parts.layer(model, parts.MLP_LAYER)
    position: dict[str, mx.array | int] = {}

    def remember(call, x, *args, **kwargs):
        cache = argument("cache", 1, args, kwargs)
        position["now"] = getattr(cache, "offset", 0)  # read before the call advances it
        return call(x, *args, **kwargs)

    def rows(x):
        if x.shape[1] != 1:
            return None
        now = mx.array(position.get("now", 0))
        return mx.broadcast_to((now > 0) & (now % KV_STEP == 0), (x.shape[0],))

    _unreduced_where(_moe_block(model), rows)
    wrap_call(decoder, remember)


class _FilterCorrupts(BatchKVCache):
    """A batch cache whose `filter` scales the values it keeps when it drops rows."""

    def filter(self, batch_indices):
        before = self.offset.shape[0]
        super().filter(batch_indices)
        if self.values is not None and len(batch_indices) < before:
            self.values = self.values * WRONG


class _TrimsOneShort(KVCache):
    """A request's cache whose `trim` is off by one in what it keeps: the last token it
    keeps holds the keys and values of the first token it trimmed away."""

    def trim(self, n):
        trimmed = super().trim(n)
        end = self.offset
        if trimmed and end and self.keys is not None:
            self.keys[..., end - 1, :] = self.keys[..., end, :]
            self.values[..., end - 1, :] = self.values[..., end, :]
        return trimmed


class _ExtractsTrimsOneShort(BatchKVCache):
    """A batch cache whose extracted (per-request) caches trim one token short."""

    def extract(self, idx):
        cache = super().extract(idx)
        cache.__class__ = _TrimsOneShort
        return cache


def _batch_caches_become(model, faulty: type) -> None:
    """Layer 2's attention turns every BatchKVCache it is given into `faulty` (that
    instance only): copies and extracts made later inherit the fault."""

    def around(call, x, *args, **kwargs):
        cache = argument("cache", 1, args, kwargs)
        if type(cache) is BatchKVCache:
            cache.__class__ = faulty
        return call(x, *args, **kwargs)

    wrap_call(attention(model), around)


def request_left(model, group):
    """After a request leaves a batch (the batch cache's `filter` drops its row), layer
    2's cache values of the rows that stay are scaled, as a sharded cache's filter that
    mixes up what it keeps: every request still running goes wrong from then on."""
    model.shard(group)
    _batch_caches_become(model, _FilterCorrupts)


def reused_prefix(model, group):
    """A request that starts from a reused prefix (mlx_lm.server's fetch_nearest_cache
    trims a copy of an earlier request's cache) gets layer 2's cache trimmed off by one:
    its last kept position holds the first trimmed token's keys and values."""
    model.shard(group)
    _batch_caches_become(model, _ExtractsTrimsOneShort)
