"""An external strategy for measuring the tok/s rule (ci/bench/tok_s_noise.sh): mlx-lm's
tensor parallel, and for the one model type named by $HARNESS_SLOW_ARCH every model call
then takes 3x its time (it sleeps twice what the evaluated call took); with
$HARNESS_SLOW_PART=decode only the decode calls (one token per sequence), with =prefill only
the others. Correctness is untouched: the outputs are the real sharded outputs."""

from __future__ import annotations

import os
import time

import mlx.core as mx


def slow_tp(model, group):
    model.shard(group)
    if type(model).__module__.rsplit(".", 1)[-1] != os.environ.get("HARNESS_SLOW_ARCH"):
        return model
    plain = type(model)
    part = os.environ.get("HARNESS_SLOW_PART", "all")

    def call(self, inputs, *args, **kwargs):
        start = time.perf_counter()
        out = plain.__call__(self, inputs, *args, **kwargs)
        decode = inputs.shape[-1] == 1
        if part == "all" or (part == "decode") == decode:
            mx.eval(out)
            time.sleep(2 * (time.perf_counter() - start))
        return out

    model.__class__ = type(f"Slow{plain.__name__}", (plain,), {"__call__": call})
    return model
