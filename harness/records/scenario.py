"""Where a scenario case (harness.scenario) first goes wrong: the structured location a
search reads (`harness explore` shrinks towards it) and the sentence a user reads, beside
the ladder's verdict and diagnoses.

A location is a dict:
- batch: `{"kind": "batch", "row", "rows", "position", "decode_step", "prefill_chunk",
  "op_index": None, "op": None, "sentence"}`;
- serve: `{"kind": "serve", "uid", "row", "position", "decode_step", "op_index", "op",
  "reused", "after", "sentence"}`.
`position` is the token's place in its own sequence (its cache offset: the tokens cached
before it, a reused prefix included), where the compared logits were computed: a prompt
token's, or the token a decode step fed in. `decode_step` counts from 0: a batch's decode
step, or a request's k-th emitted token (0: its first, computed by its prefill); None for
a prompt position. `after`: the requests that left the batch (finished or removed) before
the op that emitted it. Rows are the scenario's rows, or requests in order of insertion.

The first divergence is the earliest in time: at fp32 a position beyond the case's
tolerance, at low precision one whose error against the fp32 truth is beyond the
envelope's ratio times the single-rank run's typical error there (records.envelope).
"""

from __future__ import annotations

import numpy as np

from harness import scenario as scenarios
from harness.records import diagnose, envelope
from harness.records.ladder import Comparison, Tolerance, decode_divergence
from harness.records.outputs import Output


def _off(ref: np.ndarray, test: np.ndarray, truth: np.ndarray | None, tol: Tolerance, ratio: float):
    """Per position (all axes but the last): the test is off. NaN and Inf are off."""
    if truth is None or truth.shape != ref.shape:
        close = np.abs(test - ref) <= tol.atol + tol.rtol * np.abs(ref)
        return ~np.all(close, axis=-1)
    single = envelope.relative_errors(ref, truth)
    typical = max(float(np.nanmedian(single)) if single.size else 0.0, envelope.FLOOR)
    sharded = envelope.relative_errors(test, truth)
    return ~(sharded <= ratio * np.maximum(np.nan_to_num(single, nan=0.0), typical))


def locate(
    spec: dict, ref: Output, test: Output, tol: Tolerance, truth: Output | None = None
) -> dict | None:
    """The first divergence of `test` from `ref` in the scenario's terms, or None when
    every compared position is within bounds."""
    if ref.prefill.shape != test.prefill.shape or ref.decode.shape != test.decode.shape:
        return None
    # Prompt positions as the envelope judges them: each on its own, a router near-tie
    # flip at or before it explaining it; decode steps against the decode bound.
    prefill = _off(ref.prefill, test.prefill, truth and truth.prefill, tol, envelope.POSITION_RATIO)
    prefill &= ref.valid
    if truth is not None:
        prefill &= ~envelope.explained_positions(truth, test, ref, prefill.shape)
    decode = _off(ref.decode, test.decode, truth and truth.decode, tol, envelope.RATIO)
    return at(spec, ref, prefill, decode)


def at(spec: dict, ref: Output, prefill: np.ndarray, decode: np.ndarray) -> dict | None:
    """The earliest of the positions marked off (prefill [B, L], decode [S, B]) in the
    scenario's terms, or None when none is."""
    if spec["kind"] == scenarios.BATCH:
        return _batch(spec, ref, prefill, decode)
    return _serve(spec, ref, prefill, decode)


def _batch(spec: dict, ref: Output, prefill: np.ndarray, decode: np.ndarray) -> dict | None:
    rows, lengths = len(spec["prompts"]), spec["prompts"]
    found = {"kind": scenarios.BATCH, "rows": rows, "op_index": None, "op": None}
    if prefill.any():
        # The earliest prompt position any row gets wrong (padding sits left or right of
        # a row's tokens, so a row's own positions order them).
        cells = np.argwhere(prefill)
        row, position = min(((int(p), int(r)) for r, p in cells))[::-1]
        calls = ref.prefill_calls
        chunks = int(calls.max()) + 1 if calls is not None else 1
        chunk = int(calls[row, position]) + 1 if calls is not None else 1
        found.update(row=row, position=position, decode_step=None, prefill_chunk=chunk)
        found["sentence"] = diagnose.at_batch_prompt_token(
            row, rows, position, lengths[row], chunk, chunks
        )
        return found
    if not decode.any():
        return None
    step, row = (int(i) for i in np.argwhere(decode)[0])
    position = lengths[row] + step
    found.update(row=row, position=position, decode_step=step, prefill_chunk=None)
    found["sentence"] = diagnose.at_batch_decode_step(row, rows, step + 1, spec["decode"], position)
    return found


def _serve(spec: dict, ref: Output, prefill: np.ndarray, decode: np.ndarray) -> dict | None:
    off = np.concatenate([prefill, decode.T], axis=1)  # [requests, tokens]
    order = ref.schedule["order"]
    off &= order >= 0
    if not off.any():
        return None
    first = int(order[off].min())
    row, k = (int(i) for i in np.argwhere(order == first)[0])
    index = int(ref.schedule["op"][row, k])
    inserts = [op for op in spec["ops"] if op["op"] == scenarios.INSERT]
    uid, reused = inserts[row]["uid"], int(ref.schedule["reused"][row])
    after = _left_before(spec, ref, index, first)
    found = {
        "kind": scenarios.SERVE,
        "uid": uid,
        "row": row,
        "position": inserts[row]["prompt"] - 1 + k,
        "decode_step": k,
        "op_index": index,
        "op": spec["ops"][index]["op"],
        "reused": reused,
        "after": after,
    }
    source = inserts[row]["reuse"]["uid"] if reused else None
    found["sentence"] = diagnose.at_serve_token(
        uid, k, found["position"], index, found["op"], after, reused, source
    )
    return found


def _left_before(spec: dict, ref: Output, index: int, number: int) -> list[int]:
    """The uids that left the batch before the `number`-th emitted token, emitted by op
    `index`: removed by an earlier op, or finished (their last token emitted) earlier."""
    inserts = [op for op in spec["ops"] if op["op"] == scenarios.INSERT]
    left = []
    for row, insert in enumerate(inserts):
        order = ref.schedule["order"][row]
        emitted = order[order >= 0]
        finished = emitted.size == insert["max_tokens"] and int(emitted[-1]) < number
        removed = any(
            op["op"] == scenarios.REMOVE and op["uid"] == insert["uid"]
            for op in spec["ops"][:index]
        )
        if finished or removed:
            left.append(insert["uid"])
    return left


def explain(
    spec: dict,
    cmp: Comparison,
    ref: Output,
    test: Output,
    tol: Tolerance,
    truth: Output | None = None,
) -> dict | None:
    """For a failing comparison: its location, its sentence added to the diagnoses. A
    serve program's rows are requests and its decode steps their tokens, so the ladder's
    "from decode position" (a prompt length plus a step) says nothing there: the location
    replaces it."""
    if cmp.passed:
        return None
    where = locate(spec, ref, test, tol, truth)
    if spec["kind"] == scenarios.SERVE:
        positional = decode_divergence(ref, test, tol)
        cmp.diagnoses = [d for d in cmp.diagnoses if d != positional]
    if where is not None:
        cmp.diagnoses.append(where["sentence"])
    return where
