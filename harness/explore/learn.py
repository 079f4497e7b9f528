"""What shrinking learned: the shrunk failure's neighbours tried on the ranks, each a
question whose answer is a sentence (`only with batch >= 3`, `decode step at cache
position 256`, `after a request left the batch`, `with a reused prefix`). Nothing here
knows a fault: every fact is read off the failure's location and off which smaller or
plainer neighbours pass.

Before asking, the example is made plainer where it still fails that way: one prefill call
instead of chunks, so the reproduction carries no more than the failure needs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

from harness import scenario as scenarios
from harness.errors import HarnessError
from harness.explore.search import Found
from harness.explore.space import DEFAULT_PREFILL_STEP, Example
from harness.records.result import CaseResult
from harness.status import CaseStatus

Run = Callable[[Example], CaseResult]
FP32 = "fp32"
MAX_ROW_DROPS = 4  # a wide shrunk batch: its first and last rows are asked about


def location(result: CaseResult) -> dict:
    """Where a scenario first diverged (row or uid, cache position, decode step, op)."""
    return result.location or {}


def _valid(scenario: dict) -> dict | None:
    try:
        return scenarios.check(scenario)
    except HarnessError:
        return None


def _passes(run: Run, example: Example, scenario: dict | None = None, **changes) -> bool | None:
    """Whether the neighbour passes on the ranks; None when it is no valid scenario."""
    scenario = _valid(scenario if scenario is not None else example.scenario)
    if scenario is None:
        return None
    return run(replace(example, scenario=scenario, **changes)).status == CaseStatus.PASS


def simplify(found: Found, run: Run) -> None:
    """Keep a plainer neighbour wherever it fails too (hypothesis shrinks within a kind:
    a program found first stays a program; its shrinker can stop at two steps where one
    would do)."""
    for plainer in _plainer(found.example.scenario, location(found.result)):
        plainer = _valid(plainer)
        if plainer is None:
            continue
        candidate = replace(found.example, scenario=plainer)
        result = run(candidate)
        if result.failed:
            found.example, found.result = candidate, result
            return simplify(found, run)


def _plainer(scenario: dict, where: dict):
    """Plainer neighbours, plainest first: a program's failing request as a batch of one
    row decoding as far (its k-th token is the batch's decode step k - 1), one prefill
    call, adjacent steps merged."""
    uid, step = where.get("uid"), where.get("decode_step")
    if scenario["kind"] == scenarios.SERVE and uid is not None and step is not None:
        inserts = {op["uid"]: op for op in scenario["ops"] if op["op"] == scenarios.INSERT}
        if uid in inserts and "reuse" not in inserts[uid]:
            yield {
                "kind": scenarios.BATCH,
                "prompts": [inserts[uid]["prompt"]],
                "prefill_step": scenario["prefill_step"],
                "decode": step,
            }
    if scenario["prefill_step"] != DEFAULT_PREFILL_STEP:
        yield {**scenario, "prefill_step": DEFAULT_PREFILL_STEP}
    if scenario["kind"] == scenarios.SERVE:
        merged: list[dict] = []
        for op in scenario["ops"]:
            if op["op"] == scenarios.STEP and merged and merged[-1]["op"] == scenarios.STEP:
                merged[-1] = {"op": scenarios.STEP, "n": merged[-1]["n"] + op["n"]}
            else:
                merged.append(op)
        if len(merged) < len(scenario["ops"]):
            yield {**scenario, "ops": merged}


def learn(found: Found, run: Run) -> list[str]:
    """Simplify the shrunk failure, then the facts its neighbours establish."""
    simplify(found, run)
    example, where = found.example, location(found.result)
    facts = (
        _batch_facts(example, where, run)
        if example.scenario["kind"] == scenarios.BATCH
        else _serve_facts(example, where, run)
    )
    if example.precision != FP32 and _passes(run, example, precision=FP32):
        facts.append(f"only at {example.precision} (fp32 passes)")
    if example.scenario["prefill_step"] != DEFAULT_PREFILL_STEP:
        plainer = {**example.scenario, "prefill_step": DEFAULT_PREFILL_STEP}
        if _passes(run, example, plainer):
            facts.append(
                f"only with the prompt prefilled in chunks of {example.scenario['prefill_step']}"
            )
    found.learned = facts
    return facts


def _batch_facts(example: Example, where: dict, run: Run) -> list[str]:
    scenario, facts = example.scenario, []
    prompts = scenario["prompts"]
    rows = len(prompts)
    if rows > 1:
        drops = sorted({0, rows - 1} | set(range(min(rows, MAX_ROW_DROPS))))
        if all(_passes(run, example, {**scenario, "prompts": _without(prompts, i)}) for i in drops):
            facts.append(f"only with batch >= {rows}")
    if len(set(prompts)) > 1:
        even = {**scenario, "prompts": [max(prompts)] * rows}
        if _passes(run, example, even):
            facts.append("only with rows of mixed lengths (padded)")
    position, step = where.get("position"), where.get("decode_step")
    if position is None:
        return facts
    if step is None:
        row = where.get("row", 0)
        shorter = list(prompts)
        shorter[row] = position
        if position < prompts[row] and _passes(run, example, {**scenario, "prompts": shorter}):
            facts.append(f"prefill reaching cache position {position}")
        return facts
    if scenario["decode"] > 1 and _passes(run, example, {**scenario, "decode": step}):
        # Without the failing step (and those after it) it passes: the step matters.
        shifted = {
            **scenario,
            "prompts": [max(1, n - 1) for n in prompts],
            "decode": scenario["decode"] + 1,
        }
        if min(prompts) > 1 and _passes(run, example, shifted) is False:
            facts.append(f"decode step at cache position {position}")
        else:
            facts.append(f"decode step {step} (cache position {position})")
    elif scenario["decode"] == 1 and _passes(run, example, {**scenario, "decode": 0}):
        facts.append(f"decode step at cache position {position}")
    return facts


def _without(prompts: list[int], index: int) -> list[int]:
    return prompts[:index] + prompts[index + 1 :]


def _serve_facts(example: Example, where: dict, run: Run) -> list[str]:
    scenario, facts = example.scenario, []
    ops = scenario["ops"]
    longest = sum(op["n"] for op in ops if op["op"] == scenarios.STEP)
    for uid in where.get("after") or []:
        # The request stays instead: never removed, and too long to finish in time.
        stays = [
            {**op, "max_tokens": op["max_tokens"] + longest}
            if op["op"] == scenarios.INSERT and op["uid"] == uid
            else op
            for op in ops
            if not (op["op"] == scenarios.REMOVE and op["uid"] == uid)
        ]
        if _passes(run, example, {**scenario, "ops": stays}):
            facts.append("after a request left the batch")
            break
    for i, op in enumerate(ops):
        if "reuse" not in op:
            continue
        plain = copy.deepcopy(ops)
        del plain[i]["reuse"]
        if _passes(run, example, {**scenario, "ops": plain}):
            reuse = op["reuse"]
            facts.append(
                f"with a reused prefix ({reuse['tokens']} tokens of request {reuse['uid']})"
            )
            break
    inserts = {op["uid"]: op for op in ops if op["op"] == scenarios.INSERT}
    uid = where.get("uid")
    # A request that reuses a prefix needs its source: alone it asks another question.
    if len(inserts) > 1 and uid in inserts and "reuse" not in inserts[uid]:
        alone = [op for op in ops if op["op"] == scenarios.STEP or op.get("uid") == uid]
        if _passes(run, example, {**scenario, "ops": alone}):
            facts.append(f"only with {len(inserts)} requests in the batch")
    return facts
