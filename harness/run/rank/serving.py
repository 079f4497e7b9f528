"""A serve scenario on one rank: its program of inserts, steps and removes driven through
mlx-lm's own `BatchGenerator` (its caches merged, extended, filtered and extracted by
mlx-lm's code), a reused prefix fetched from mlx-lm's own `LRUPromptCache` as
mlx_lm.server fetches it. Every rank runs the same program on the same inputs, in step.

Greedy, with no stop tokens: each request emits exactly its `max_tokens` unless removed,
so the program's shape (who is in the batch at every call) does not depend on the
tokens. A sharded run is fed the reference's tokens: each request gets a sampler that
returns the reference's next token, so a flipped argmax does not change what follows;
its own greedy choices are the argmax of the logprobs it emitted.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from harness import scenario as scenarios
from harness.errors import HarnessError, model_code
from harness.records.outputs import Output
from harness.shapes import VOCAB

# The one model a program's prompt cache holds (LRUPromptCache keys entries by model).
MODEL_KEY = "model"


def _serving_api() -> tuple[type, type]:
    """mlx-lm's BatchGenerator and LRUPromptCache, imported when a program runs: the rest
    of the rank side also runs under older releases (a bisect's), which lack them (0.30.0
    keeps its LRUPromptCache in mlx_lm.server)."""
    try:
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.models.cache import LRUPromptCache
    except ImportError as exc:
        raise HarnessError(
            f"serve scenarios drive the serving API of mlx-lm 0.32 ({exc}): this mlx-lm "
            "cannot run them"
        ) from None
    return BatchGenerator, LRUPromptCache


def _forcing(tokens: np.ndarray) -> Callable[[mx.array], mx.array]:
    """A sampler that returns `tokens` in order (one call per generation step of its
    request), then its own argmax once they run out (the step after the last emitted
    token, whose sample BatchGenerator throws away)."""
    fed = iter(int(t) for t in tokens if t >= 0)

    def sample(logprobs: mx.array) -> mx.array:
        token = next(fed, None)
        if token is None:
            return mx.argmax(logprobs, axis=-1)
        return mx.array([token], dtype=mx.uint32)

    return sample


class _Program:
    """The state of one program's run: the generator, each request's prompt, the
    requests that left with their caches, and what was emitted. mlx-lm's serving code
    runs marked as the code under test (what it raises is the model's); the program's
    own bookkeeping is the harness's."""

    def __init__(self, model: nn.Module, spec: dict, seed: int, forced: np.ndarray | None):
        self.spec, self.seed, self.forced = spec, seed, forced
        batch_generator, self.prompt_cache = _serving_api()
        with model_code():
            self.generator = batch_generator(model, prefill_step_size=spec["prefill_step"])
        inserts = [op for op in spec["ops"] if op["op"] == scenarios.INSERT]
        self.row = {op["uid"]: row for row, op in enumerate(inserts)}
        self.uid_of: dict[int, int] = {}  # the generator's uid -> the scenario's
        self.handle: dict[int, int] = {}  # the scenario's uid -> the generator's
        self.prompts: dict[int, list[int]] = {}
        self.left: dict[int, tuple[list, list[int]]] = {}  # uid -> (cache, its tokens)
        self.reused = np.zeros(len(inserts), dtype=np.int64)
        self.emitted: list[tuple[int, int, mx.array]] = []  # (row, op index, logprobs)

    def insert(self, op: dict) -> None:
        uid, length = op["uid"], op["prompt"]
        tokens = scenarios.prompt(self.seed, uid, length)
        cache, rest = None, tokens
        if "reuse" in op:
            tokens, cache, rest = self._reuse(op["reuse"], tokens)
        kwargs = {}
        if self.forced is not None:
            kwargs["samplers"] = [_forcing(self.forced[self.row[uid]])]
        if cache is not None:
            kwargs.update(caches=[cache], all_tokens=[tokens[: len(tokens) - len(rest)]])
        with model_code():
            (handle,) = self.generator.insert([rest], max_tokens=[op["max_tokens"]], **kwargs)
        self.prompts[uid] = tokens
        self.reused[self.row[uid]] = len(tokens) - len(rest)
        self.uid_of[handle], self.handle[uid] = uid, handle

    def _reuse(self, reuse: dict, own: list[int]) -> tuple[list[int], list | None, list[int]]:
        """The prompt (its first n tokens the source's), and the cache mlx_lm.server would
        start it from: the source's cache, held in an LRUPromptCache under the tokens it
        holds, fetched for this prompt (a trimmed copy), with the tokens left to prefill."""
        source, n = reuse["uid"], reuse["tokens"]
        handle = self.handle[source]
        with model_code():
            if source in self.left:
                cache, held = self.left[source]
            else:  # still in the batch: a copy, as the server saves a prompt segment's cache
                cache, held = self.generator.extract_cache([handle])[handle]
        tokens = self.prompts[source][:n] + own[n:]
        if n < len(tokens) and n < len(held) and tokens[n] == held[n]:
            # Differ right after the shared prefix, so exactly n tokens are common.
            tokens[n] = tokens[n] % (VOCAB - 1) + 1
        with model_code():
            store = self.prompt_cache(max_size=1)
            store.insert_cache(MODEL_KEY, list(held), cache)
            fetched, rest = store.fetch_nearest_cache(MODEL_KEY, tokens)
        return tokens, fetched, list(rest)

    def step(self, index: int, calls: int) -> None:
        for _ in range(calls):
            with model_code():
                _, responses = self.generator.next()
            for response in responses:
                uid = self.uid_of[response.uid]
                self.emitted.append((self.row[uid], index, response.logprobs))
                if response.finish_reason is not None:
                    self.left[uid] = (response.prompt_cache, list(response.all_tokens))

    def remove(self, op: dict) -> None:
        handle = self.handle[op["uid"]]
        with model_code():
            caches = self.generator.remove([handle], return_prompt_caches=True)
        if handle in caches:  # not when it had finished already
            cache, held = caches[handle]
            self.left[op["uid"]] = (cache, list(held))

    def output(self) -> Output:
        if not self.emitted:
            raise HarnessError(
                "the serve scenario emitted no token, so nothing can be compared: give its "
                "requests step ops after their inserts"
            )
        rows = len(self.row)
        counts = np.zeros(rows, dtype=np.int64)
        for row, _, _ in self.emitted:
            counts[row] += 1
        T = int(counts.max())
        V = int(self.emitted[0][2].shape[-1])
        logprobs = np.zeros((rows, T, V), dtype=np.float32)
        op = np.full((rows, T), -1, dtype=np.int64)
        order = np.full((rows, T), -1, dtype=np.int64)
        seen = np.zeros(rows, dtype=np.int64)
        for number, (row, index, values) in enumerate(self.emitted):
            k = seen[row]
            logprobs[row, k] = np.array(values.astype(mx.float32))
            op[row, k], order[row, k] = index, number
            seen[row] += 1
        tokens = np.where(order >= 0, np.argmax(logprobs, axis=-1), -1).astype(np.int64)
        return Output(
            prefill=logprobs[:, :1],
            decode=np.ascontiguousarray(logprobs[:, 1:].transpose(1, 0, 2)),
            tokens=tokens,
            # A request removed before its first token has nothing to compare.
            prefill_calls=np.where(order[:, :1] >= 0, 0, -1).astype(np.int32),
            forced=self.forced is not None,
            schedule={"op": op, "order": order, "reused": self.reused.copy()},
        )


def run(model: nn.Module, spec: dict, seed: int, forced: np.ndarray | None) -> Output:
    """Run a serve scenario's program; `forced` [requests, tokens]: the reference's
    tokens per request in order of insertion (-1 past a request's last), or None (greedy).
    Rows of the output are requests in order of insertion."""
    if forced is not None and forced.shape[0] != sum(
        op["op"] == scenarios.INSERT for op in spec["ops"]
    ):
        forced = None  # not this program's reference: greedy
    program = _Program(model, spec, seed, forced)
    try:
        for index, op in enumerate(spec["ops"]):
            if op["op"] == scenarios.INSERT:
                program.insert(op)
            elif op["op"] == scenarios.STEP:
                program.step(index, op["n"])
            else:
                program.remove(op)
        return program.output()
    finally:
        # The generator leaves its next step in flight (async_eval), collectives and all:
        # finish it here, or the job's next gather over the group meets it on the wire.
        with model_code():
            mx.synchronize(program.generator.stream)
            program.generator.close()
