"""Choosing cases from CLI options: a suite, or architectures with strategies and precisions."""

from __future__ import annotations

import json
from dataclasses import replace

from harness import suites
from harness.case import Case
from harness.errors import HarnessError


def select_cases(
    suite: str | None,
    arch: list[str] | None,
    strategy: str | None,
    precision: list[str] | None,
    shapes: list[str] | None = None,
    scenario: str | None = None,
    seed: int | None = None,
) -> list[Case]:
    """A suite's cases (at `shapes` instead of theirs, if given), or architectures by name:
    every strategy asked for stays, so one the architecture lacks is skipped with the reason.
    With `scenario` (JSON, harness.scenario), every case runs that scenario; with `seed`,
    every case takes that seed."""
    if (suite is None) == (not arch):
        raise HarnessError("give either --suite NAME or one or more --arch NAME")
    if seed is not None:
        if seed < 0:
            raise HarnessError(f"--seed must be 0 or more, got {seed}")
        cases = select_cases(suite, arch, strategy, precision, shapes, scenario)
        return suites.dedupe([replace(c, seed=seed) for c in cases])
    if scenario is not None:
        if shapes:
            raise HarnessError("give --shapes or --scenario, not both: a scenario sets its shapes")
        spec = _scenario(scenario)
        cases = select_cases(suite, arch, strategy, precision)
        return suites.dedupe([replace(c, scenario=spec) for c in cases])
    if suite is not None:
        cases = suites.load_suite(suite)
        if shapes:
            cases = suites.override_shapes(cases, shapes)
        return suites.override_strategy(cases, strategy) if strategy else cases
    for name in arch:
        suites.get_arch(name)
    strategies = [strategy] if strategy else ["tp", "pp"]
    return suites.matrix_cases(
        list(arch), strategies, precision or ["fp32"], {}, shapes, keep_unsupported=True
    )


def _scenario(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HarnessError(f"--scenario is not JSON: {exc}") from None
