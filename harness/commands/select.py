"""Choosing cases from CLI options: a suite, or architectures with strategies and precisions."""

from __future__ import annotations

from harness import suites
from harness.case import Case
from harness.errors import HarnessError


def select_cases(
    suite: str | None, arch: list[str] | None, strategy: str | None, precision: list[str] | None
) -> list[Case]:
    if (suite is None) == (not arch):
        raise HarnessError("give either --suite NAME or one or more --arch NAME")
    if suite is not None:
        cases = suites.load_suite(suite)
        return suites.override_strategy(cases, strategy) if strategy else cases
    for name in arch:
        suites.get_arch(name)
    strategies = [strategy] if strategy else ["tp", "pp"]
    return suites.matrix_cases(list(arch), strategies, precision or ["fp32"], {})
