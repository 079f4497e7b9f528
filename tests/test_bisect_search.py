"""The binary search as a pure function of its judge."""

import pytest

from harness.bisect.search import bisect
from harness.errors import HarnessError
from harness.status import StepVerdict

ITEMS = [f"v{i}" for i in range(10)]


def judge_from(first_bad: int, skip: set[int] = frozenset(), inverse: bool = False):
    calls = []

    def judge(item: str) -> str:
        index = ITEMS.index(item)
        calls.append(index)
        if index in skip:
            return StepVerdict.SKIP
        changed = index >= first_bad
        return (
            (StepVerdict.GOOD if changed else StepVerdict.BAD)
            if inverse
            else (StepVerdict.BAD if changed else StepVerdict.GOOD)
        )

    return judge, calls


@pytest.mark.parametrize("first_bad", range(1, 10))
def test_finds_the_first_bad_item_in_log_steps(first_bad):
    judge, calls = judge_from(first_bad)
    result = bisect(ITEMS, judge)
    assert (result.last_old, result.first_new) == (ITEMS[first_bad - 1], ITEMS[first_bad])
    assert result.skipped == []
    assert len(calls) <= 2 + 4  # both endpoints, then ceil(log2(8)) probes at most


def test_a_skipped_item_is_never_counted_bad():
    judge, _ = judge_from(6, skip={4, 5})
    result = bisect(ITEMS, judge)
    assert result.first_new == "v6" and result.last_old == "v3"
    assert result.skipped == ["v4", "v5"]  # the change may sit in any of them
    assert ("v4", StepVerdict.SKIP) in result.steps


def test_skips_around_the_middle_still_find_it():
    judge, _ = judge_from(2, skip={4})
    result = bisect(ITEMS, judge)
    assert (result.last_old, result.first_new, result.skipped) == ("v1", "v2", [])


def test_inverse_finds_the_fix():
    judge, _ = judge_from(7, inverse=True)
    result = bisect(ITEMS, judge, inverse=True)
    assert (result.last_old, result.first_new) == ("v6", "v7")


def test_endpoints_must_hold():
    judge, _ = judge_from(0)
    with pytest.raises(HarnessError, match="v0 was expected good but is bad"):
        bisect(ITEMS, judge)
    judge, _ = judge_from(5, skip={9})
    with pytest.raises(HarnessError, match="v9 was expected bad but is skip"):
        bisect(ITEMS, judge)
