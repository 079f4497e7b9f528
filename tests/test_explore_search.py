"""The search, shrinking and what shrinking learned, against pure-Python predicates that
stand in for the ranks (they test the search, not the ranks): each fails the way a fault
along one dimension would, and says where, as the ranks' results do."""

import itertools

import pytest

from harness import scenario as scenarios
from harness.case import Case
from harness.explore import learn
from harness.explore.search import Memo, Target, search
from harness.explore.space import DEFAULT_PREFILL_STEP, Boundaries
from harness.records.result import CaseResult
from harness.status import CaseStatus

TARGET = Target("qwen3_moe", "tp", ("fp32",), Boundaries(window=None, sort_tokens=32))


def _result(where: dict | None) -> CaseResult:
    result = CaseResult(
        0, Case("qwen3_moe"), 2, CaseStatus.FAIL if where is not None else CaseStatus.PASS
    )
    result.reason = "rank 0: first divergence" if where is not None else None
    result.location = where
    return result


def wide_batch(example):
    """Rows past the second diverge."""
    s = example.scenario
    if s["kind"] == "batch" and len(s["prompts"]) >= 3:
        return {"row": 2, "position": 0, "decode_step": None}
    return None


def growth_step(example):
    """A decode step that writes a cache position that is a multiple of 256."""
    s = example.scenario
    if s["kind"] != "batch":
        return None
    for row, n in enumerate(s["prompts"]):
        for step in range(s["decode"]):
            if (n + step) % 256 == 0:
                return {"row": row, "position": n + step, "decode_step": step}
    return None


def after_remove(example):
    """A step once a request has left while another is still in the batch."""
    s = example.scenario
    if s["kind"] != "serve":
        return None
    live, left = set(), False
    for index, op in enumerate(s["ops"]):
        if op["op"] == scenarios.INSERT:
            live.add(op["uid"])
        elif op["op"] == scenarios.REMOVE:
            live.discard(op["uid"])
            left = True
        elif left and live:
            after = [op["uid"] for op in s["ops"][:index] if op["op"] == scenarios.REMOVE]
            return {"uid": min(live), "op_index": index, "op": "step", "after": after}
    return None


def reused(example):
    """A request that starts from an earlier one's trimmed cache."""
    s = example.scenario
    if s["kind"] != "serve":
        return None
    for index, op in enumerate(s["ops"]):
        if "reuse" in op:
            return {"uid": op["uid"], "op_index": index, "op": "insert", "position": 0}
    return None


def _memo(predicate):
    return Memo(lambda example: _result(predicate(example)), lambda example, result: None)


def _tick():
    """A clock that moves one second per call: budgets count calls, on any machine."""
    counter = itertools.count()
    return lambda: float(next(counter))


def _search(predicate, budget=400, shrink=2000, seed=3):
    memo = _memo(predicate)
    searched = search(TARGET, memo, budget_s=budget, shrink_s=shrink, seed=seed, clock=_tick())
    return searched, memo


def test_a_wide_batch_bug_is_found_shrunk_to_three_rows_and_explained():
    searched, memo = _search(wide_batch)
    found = searched.found
    assert found is not None
    assert found.example.scenario["prompts"] == [1, 1, 1] and found.example.scenario["decode"] == 0
    facts = learn.learn(found, memo)
    assert facts == ["only with batch >= 3"]
    assert found.example.scenario["prefill_step"] == DEFAULT_PREFILL_STEP


def test_a_growth_step_bug_shrinks_to_one_row_crossing_256_in_decode():
    searched, memo = _search(growth_step)
    scenario = searched.found.example.scenario
    assert len(scenario["prompts"]) == 1 and scenario["prompts"][0] <= 256
    assert scenario["prompts"][0] + scenario["decode"] - 1 == 256
    assert "decode step at cache position 256" in learn.learn(searched.found, memo)


def test_a_serving_bug_after_a_request_left_is_shrunk_and_explained():
    searched, memo = _search(after_remove)
    ops = searched.found.example.scenario["ops"]
    assert [op["op"] for op in ops] == ["insert", "insert", "remove", "step"]
    assert "after a request left the batch" in learn.learn(searched.found, memo)


def test_a_reused_prefix_bug_is_shrunk_and_explained():
    searched, memo = _search(reused)
    facts = learn.learn(searched.found, memo)
    ops = searched.found.example.scenario["ops"]
    # The source is prefilled before its prefix is reused: a step between the inserts.
    assert [op["op"] for op in ops] == ["insert", "step", "insert", "step"]
    assert ops[2]["reuse"] == {"uid": 0, "tokens": 1}
    assert any(f.startswith("with a reused prefix") for f in facts)


def test_nothing_found_stops_cleanly_when_the_budget_is_spent():
    searched, memo = _search(lambda example: None, budget=60)
    assert searched.found is None and not searched.exhausted
    assert 50 <= searched.examples <= 60 and searched.operations >= searched.examples


def test_a_strategy_that_fails_every_example_is_one_failure_at_the_smallest_example():
    searched, memo = _search(lambda example: {"row": 0, "position": 0})
    assert searched.found.example.scenario == {
        "kind": "batch",
        "prompts": [1],
        "prefill_step": DEFAULT_PREFILL_STEP,
        "decode": 0,
    }


def test_shrinking_is_bounded_and_keeps_the_smallest_failure_seen():
    searched, memo = _search(wide_batch, shrink=3)
    assert searched.found is not None and len(searched.found.example.scenario["prompts"]) >= 3
    assert searched.examples < _search(wide_batch)[0].examples


def test_the_seed_makes_the_search_reproducible():
    first, _ = _search(growth_step, seed=11)
    again, _ = _search(growth_step, seed=11)
    assert first.found.first_seen == again.found.first_seen
    assert first.found.example == again.found.example


@pytest.mark.parametrize("precision, facts", [("q4-bf16", ["only at q4-bf16 (fp32 passes)"])])
def test_a_low_precision_only_bug_says_so(precision, facts):
    def low(example):
        return {"row": 0, "position": 0} if example.precision != "fp32" else None

    target = Target("qwen3_moe", "tp", ("q4-bf16",))
    memo = _memo(low)
    searched = search(target, memo, budget_s=100, shrink_s=500, seed=1, clock=_tick())
    assert learn.learn(searched.found, memo) == facts


def test_the_explore_selftest_judges_found_shrunk_missed_and_controls():
    from harness.explore.search import Found, Searched
    from harness.explore.selftest import ExploreVerdictWord as V
    from harness.explore.selftest import judge
    from harness.explore.space import Example
    from harness.faults.catalog import CATALOG

    fault = CATALOG["wide_batch"]
    smallest = Example(
        "fp32", {"kind": "batch", "prompts": [1, 1, 1], "prefill_step": 2048, "decode": 0}
    )
    wider = Example(
        "fp32", {"kind": "batch", "prompts": [1, 1, 1, 1], "prefill_step": 1, "decode": 0}
    )

    def searched(example):
        found = Found(TARGET, example, _result({}), first_seen=example) if example else None
        return Searched(TARGET, found=found)

    assert judge(fault, searched(smallest)) == V.CAUGHT
    assert judge(fault, searched(wider)) == V.NOT_SHRUNK
    assert judge(fault, searched(None)) == V.MISSED
    assert judge(None, searched(None)) == V.PASSED
    assert judge(None, searched(smallest)) == V.FALSE_ALARM


def test_examples_the_ranks_cannot_apply_are_counted_with_a_reason():
    def evaluate(example):
        result = _result(None)
        if example.scenario["kind"] == "serve":
            result.status, result.reason = CaseStatus.SKIP, "its caches cannot merge"
        return result

    memo = Memo(evaluate, lambda example, result: None)
    searched = search(TARGET, memo, budget_s=60, shrink_s=60, seed=2, clock=_tick())
    assert searched.found is None and 0 < searched.skipped < searched.examples
    assert searched.skip_reason == "its caches cannot merge"
