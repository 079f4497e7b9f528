"""Scenarios: what a case runs when today's fixed shapes are not enough (README,
"Scenarios"). A scenario is a JSON-able dict, part of a case's key and
label, validated here with one sentence per mistake; `harness explore` draws them, suites
and `harness run --scenario` replay them.

- `{"kind": "batch", "prompts": [L, ...], "prefill_step": S, "decode": D}`: one batch of
  B = len(prompts) rows (1 to 32) of these lengths, padded as mlx-lm's batch generation
  pads them (right-padded while prefilling in chunks of S tokens, `prefill_step_size`,
  then the padding rolled to the left), then D decode steps with the KV cache, every
  sharded step fed the reference's tokens. Compared at every prompt position and every
  decode step of every row.
- `{"kind": "serve", "prefill_step": S, "ops": [...]}`: a program for mlx-lm's own
  `BatchGenerator` (greedy, no stop tokens, so each request emits exactly its
  `max_tokens` unless removed), ops in order:
  - `{"op": "insert", "uid": u, "prompt": L, "max_tokens": T}`, optionally with
    `"reuse": {"uid": v, "tokens": n}`: the prompt's first n tokens are request v's, and
    the request starts from the cache mlx_lm.server would give it: v's cache (the one v
    gave back when it left the batch, finished or removed, else a copy extracted from the
    running batch, as the server saves a prompt segment's cache) stored in an
    `LRUPromptCache` under v's tokens and fetched for the new prompt
    (`fetch_nearest_cache`: a trimmed copy, at least one token left to prefill);
  - `{"op": "step", "n": k}`: k calls of `BatchGenerator.next()`;
  - `{"op": "remove", "uid": u}`: the request leaves before it finished
    (`remove(..., return_prompt_caches=True)`; a request that already finished is gone,
    and removing it changes nothing).
  Every emitted token's logprobs are compared with the single-rank run of the same
  program; the sharded run is fed the reference's tokens (its sampler returns them), so
  one flipped argmax does not change what follows, and its own greedy choices are judged
  as the ladder judges decode tokens (top-k containment).

Prompt token ids come from (case seed, row or uid, length) through the generator the
shape profiles use (`shapes.tokens`).
"""

from __future__ import annotations

import hashlib
import json

from harness.errors import HarnessError
from harness.shapes import VOCAB, tokens

BATCH, SERVE = "batch", "serve"
KINDS = (BATCH, SERVE)
INSERT, STEP, REMOVE = "insert", "step", "remove"
OPS = (INSERT, STEP, REMOVE)
# mlx-lm's BatchGenerator decodes at most `completion_batch_size` (32) sequences at once;
# batch_generate's batches are as wide.
MAX_ROWS = 32
# Bounds that keep one example within a case's watchdog on a tiny model and its outputs
# within reach of the wire (32 rows x 2,304 positions x 256 logits is 75 MB a rank): a
# prompt past mlx-lm's 2,048-token prefill step and one cache growth step still fits.
MAX_PROMPT = 2304
MAX_DECODE = 1024
MAX_OPS = 256
# mlx-lm's KVCache and BatchKVCache grow their buffers in steps of this many positions
# (`KVCache.step`, mlx-lm 0.32.2): the 257th cached token reallocates.
KV_STEP = 256


def _int(value, what: str, least: int, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
        raise HarnessError(
            f"scenario: {what} must be an integer from {least} to {most}, got {value!r}"
        )
    return value


def _keys(data: dict, what: str, required: set, optional: set = frozenset()) -> None:
    missing = sorted(required - set(data))
    if missing:
        raise HarnessError(f"scenario: {what} needs {', '.join(map(repr, missing))}")
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise HarnessError(f"scenario: {what} has unknown key(s) {', '.join(map(repr, unknown))}")


def check(scenario) -> dict:
    """The scenario, validated and copied (a new dict of plain ints and lists), or a
    HarnessError saying in one sentence what is wrong."""
    if not isinstance(scenario, dict):
        raise HarnessError(f"scenario: must be a table (a JSON object), got {scenario!r}")
    kind = scenario.get("kind")
    if kind == BATCH:
        return _batch(scenario)
    if kind == SERVE:
        return _serve(scenario)
    raise HarnessError(f"scenario: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")


def _batch(scenario: dict) -> dict:
    _keys(scenario, "a batch scenario", {"kind", "prompts", "prefill_step", "decode"})
    prompts = scenario["prompts"]
    if not isinstance(prompts, list | tuple) or not 1 <= len(prompts) <= MAX_ROWS:
        raise HarnessError(
            f"scenario: 'prompts' must be a list of 1 to {MAX_ROWS} prompt lengths, got {prompts!r}"
        )
    return {
        "kind": BATCH,
        "prompts": [_int(n, f"prompt length {i}", 1, MAX_PROMPT) for i, n in enumerate(prompts)],
        "prefill_step": _int(scenario["prefill_step"], "'prefill_step'", 1, MAX_PROMPT),
        "decode": _int(scenario["decode"], "'decode'", 0, MAX_DECODE),
    }


def _serve(scenario: dict) -> dict:
    _keys(scenario, "a serve scenario", {"kind", "prefill_step", "ops"})
    ops = scenario["ops"]
    if not isinstance(ops, list | tuple) or not 1 <= len(ops) <= MAX_OPS:
        raise HarnessError(f"scenario: 'ops' must be a list of 1 to {MAX_OPS} operations")
    prompts: dict[int, int] = {}  # uid -> prompt length, in order of insertion
    removed: set[int] = set()
    checked = []
    for index, op in enumerate(ops):
        where = f"op {index}"
        if not isinstance(op, dict) or op.get("op") not in OPS:
            raise HarnessError(
                f"scenario: {where} must be a table with 'op' one of {', '.join(OPS)}"
            )
        name = op["op"]
        if name == INSERT:
            checked.append(_insert(op, where, prompts))
        elif name == STEP:
            _keys(op, f"{where} (step)", {"op", "n"})
            checked.append({"op": STEP, "n": _int(op["n"], f"{where}'s 'n'", 1, MAX_DECODE)})
        else:
            _keys(op, f"{where} (remove)", {"op", "uid"})
            uid = op["uid"]
            if uid not in prompts or uid in removed:
                raise HarnessError(
                    f"scenario: {where} removes uid {uid!r}, which is not in the batch "
                    "(never inserted, or already removed)"
                )
            removed.add(uid)
            checked.append({"op": REMOVE, "uid": uid})
    if len(prompts) > MAX_ROWS * 4:
        raise HarnessError(f"scenario: at most {MAX_ROWS * 4} inserts, got {len(prompts)}")
    return {
        "kind": SERVE,
        "prefill_step": _int(scenario["prefill_step"], "'prefill_step'", 1, MAX_PROMPT),
        "ops": checked,
    }


def _insert(op: dict, where: str, prompts: dict[int, int]) -> dict:
    _keys(op, f"{where} (insert)", {"op", "uid", "prompt", "max_tokens"}, {"reuse"})
    uid = _int(op["uid"], f"{where}'s 'uid'", 0, 10**6)
    if uid in prompts:
        raise HarnessError(f"scenario: {where} inserts uid {uid} again; each uid is one request")
    length = _int(op["prompt"], f"{where}'s 'prompt' (its length)", 1, MAX_PROMPT)
    out = {
        "op": INSERT,
        "uid": uid,
        "prompt": length,
        "max_tokens": _int(op["max_tokens"], f"{where}'s 'max_tokens'", 1, MAX_DECODE),
    }
    if "reuse" in op:
        reuse = op["reuse"]
        if not isinstance(reuse, dict):
            raise HarnessError(f"scenario: {where}'s 'reuse' must be a table {{uid, tokens}}")
        _keys(reuse, f"{where}'s 'reuse'", {"uid", "tokens"})
        source = reuse["uid"]
        if source not in prompts:
            raise HarnessError(
                f"scenario: {where} reuses uid {source!r}, which no earlier op inserted"
            )
        most = min(length, prompts[source])
        out["reuse"] = {
            "uid": source,
            "tokens": _int(
                reuse["tokens"], f"{where}'s reused 'tokens' (at most both prompts)", 1, most
            ),
        }
    prompts[uid] = length
    return out


def canonical(scenario: dict) -> str:
    """The scenario as compact JSON with sorted keys: its identity in case keys."""
    return json.dumps(scenario, sort_keys=True, separators=(",", ":"))


def label(scenario: dict) -> str:
    """A short readable name: `batch 3x[5,9,300] step 32 decode 4`, or `serve 6 ops
    step 32 #1a2b3c` (a program is too long to spell; the hash tells two apart)."""
    if scenario["kind"] == BATCH:
        lengths = ",".join(map(str, scenario["prompts"]))
        return (
            f"batch {len(scenario['prompts'])}x[{lengths}] step {scenario['prefill_step']} "
            f"decode {scenario['decode']}"
        )
    digest = hashlib.sha256(canonical(scenario).encode()).hexdigest()[:6]
    return f"serve {len(scenario['ops'])} ops step {scenario['prefill_step']} #{digest}"


def prompt(seed: int, stream: int, length: int) -> list[int]:
    """The token ids of a scenario's prompt: row `stream` of a batch, or request uid
    `stream`, under the case's seed; the same ids on every rank and every machine."""
    return list(tokens(length, seed * (VOCAB + 1) + stream))


def extent(scenario: dict) -> int:
    """The most positions any one sequence's cache holds: its prompt plus its decode."""
    if scenario["kind"] == BATCH:
        return max(scenario["prompts"]) + scenario["decode"]
    return max(op["prompt"] + op["max_tokens"] for op in scenario["ops"] if op["op"] == INSERT)


def work(scenario: dict) -> int:
    """How many tokens the scenario feeds the model in all (prompts and decode steps of
    every sequence): what its watchdog is scaled by."""
    if scenario["kind"] == BATCH:
        rows = len(scenario["prompts"])
        return max(scenario["prompts"]) * rows + scenario["decode"] * rows
    return sum(op["prompt"] + op["max_tokens"] for op in scenario["ops"] if op["op"] == INSERT)
