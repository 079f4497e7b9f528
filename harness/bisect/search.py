"""Binary search for the first item that turned bad, over an ordered list, as a pure
function of a judge callback.

Items run oldest to newest. The first is expected good and the last bad; `inverse` swaps
the roles (the first bad, the last good: find what fixed it). A judge answers a StepVerdict:
GOOD, BAD or SKIP (the item cannot be judged: an architecture it lacks, a loader API that differs);
a skipped item is never counted as bad, and the search probes its neighbours instead, so
the answer may be a range of skipped items ending at the first bad one, as `git bisect`
reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from harness.errors import HarnessError
from harness.status import StepVerdict

T = TypeVar("T")


@dataclass
class Bisection(Generic[T]):
    last_old: T  # the last item in the old state (good; bad with inverse)
    first_new: T  # the first item in the new state (bad; good with inverse)
    skipped: list[T]  # skipped items between them: the change may sit in any of these
    steps: list[tuple[T, StepVerdict]] = field(default_factory=list)  # (item, verdict) in order


def bisect(
    items: Sequence[T], judge: Callable[[T], StepVerdict], inverse: bool = False, label=str
) -> Bisection[T]:
    if len(items) < 2:
        raise HarnessError("a bisection needs at least two items: the good and the bad one")
    old_state, new_state = (
        (StepVerdict.BAD, StepVerdict.GOOD) if inverse else (StepVerdict.GOOD, StepVerdict.BAD)
    )
    steps: list[tuple[T, StepVerdict]] = []

    def verdict(index: int) -> StepVerdict:
        answer = judge(items[index])
        if answer not in tuple(StepVerdict):
            raise ValueError(f"a judge answers one of {tuple(StepVerdict)}, not {answer!r}")
        steps.append((items[index], answer))
        return answer

    for index, expected in ((0, old_state), (len(items) - 1, new_state)):
        answer = verdict(index)
        if answer != expected:
            raise HarnessError(
                f"{label(items[index])} was expected {expected} but is {answer}: "
                "nothing to bisect between these two"
            )
    low, high, skipped = 0, len(items) - 1, set()
    while True:
        candidates = [i for i in range(low + 1, high) if i not in skipped]
        if not candidates:
            break
        middle = (low + high) // 2
        # The untried index nearest the middle, as git bisect picks around a skip.
        probe = min(candidates, key=lambda i: (abs(i - middle), i))
        answer = verdict(probe)
        if answer == StepVerdict.SKIP:
            skipped.add(probe)
        elif answer == old_state:
            low = probe
        else:
            high = probe
    between = [items[i] for i in range(low + 1, high)]
    return Bisection(items[low], items[high], between, steps)
