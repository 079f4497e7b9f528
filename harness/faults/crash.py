"""Rank failures: a rank that raises, aborts, segfaults or hangs in a collective.

The harness must turn each into a recorded failure of that case, with the rank and its
stderr, within the case timeout, and go on with the remaining cases.
"""

from __future__ import annotations

import ctypes
import os
import time


def _last_rank(group) -> bool:
    return group.rank() == group.size() - 1


def raise_on_last_rank(model, group):
    """The last rank raises while sharding; the others go on into the first collective."""
    if _last_rank(group):
        raise RuntimeError("injected failure while sharding")
    model.shard(group)


def abort_on_last_rank(model, group):
    """The last rank aborts (SIGABRT), as a failed C++ assertion would."""
    if _last_rank(group):
        os.abort()
    model.shard(group)


def segfault_on_last_rank(model, group):
    """The last rank dereferences a null pointer (SIGSEGV), as a collective overrunning
    its buffer does."""
    if _last_rank(group):
        ctypes.string_at(0)
    model.shard(group)


def hang_on_last_rank(model, group):
    """The last rank never reaches the collective: the others block in all_sum forever."""
    if _last_rank(group):
        time.sleep(3600)
    model.shard(group)
