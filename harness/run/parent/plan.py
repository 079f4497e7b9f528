"""Planning a run: the options, what cannot apply (skip), and the checks that would
otherwise fail late (the rank count a hostfile sets, the hosts, the strategies), once,
before anything launches."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from harness import paths, preflight
from harness.case import Case
from harness.errors import HarnessError
from harness.models import answers, checkpoint
from harness.models.build import precision_problem, shape_skip_reason, tiny_config
from harness.run.parent.hosts import check_hosts
from harness.run.parent.target import Target, find_launcher, rank_count
from harness.strategies import BUILTIN, normalize, resolve
from harness.zoo import support

SINGLE, GOLDEN = "single", "golden"


@dataclass
class RunOptions:
    ranks: int = 1
    backend: str | None = None
    hostfile: str | None = None
    timeout: float = 60.0  # per case (or reference round), from its start on the ranks
    startup_timeout: float = 120.0  # from launch to the first message
    repeats: int = 3
    capture: bool = True
    goldens: Path | None = paths.SHIPPED_GOLDENS  # None: do not compare with goldens
    record_missing: bool = False
    # What a case is held against: the single-rank run (on the ranks), its golden, or
    # another strategy on the same ranks (e.g. "pp").
    reference: str = SINGLE
    python: str | None = None  # interpreter of the ranks; None: this one
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the ranks
    workdir: Path | None = None  # working directory of the ranks on every host
    impl: dict[str, str] = field(default_factory=dict)  # model_type -> another model file
    strict: bool = False  # cases asked for by name: a preflight violation is an error
    # Keep every rank's output on its result (in memory, never stored): for callers that
    # hold two runs against each other (diff-impl's sharded side).
    keep_outputs: bool = False

    def target(self) -> Target:
        return Target(self.ranks, self.backend, self.hostfile, self.python, self.env, self.workdir)


def skip_reason(case: Case, ranks: int) -> str | None:
    """Why a case cannot apply at `ranks` ranks, or None."""
    return unavailable(case) or preflight_violation(case, ranks)


def unavailable(case: Case) -> str | None:
    """Why this machine's mlx-lm cannot run the case at all (architecture, strategy,
    checkpoint, shape), whatever the rank count, or None."""
    sup = support(case.arch)
    if not sup.available:
        return sup.reason
    strategy = resolve(case.strategy)
    if strategy.requires and not getattr(sup, strategy.requires):
        kind = {"tp": "tensor-parallel shard()", "pp": "pipeline()"}[strategy.requires]
        return f"{case.arch} has no {kind} in the installed mlx-lm"
    return checkpoint.skip_reason(case) or shape_skip_reason(case) or precision_problem(case)


def preflight_violation(case: Case, ranks: int) -> str | None:
    """The first divisibility or shape rule the case breaks at `ranks`, as one sentence."""
    config = checkpoint.case_config(case) if case.checkpoint else tiny_config(case)

    def first() -> str | None:
        violations = preflight.check(config, case.strategy, ranks, case.quant, case.group_size)
        return violations[0].message if violations else None

    asked = [config, case.strategy, ranks, case.quant, case.group_size]
    return answers.remembered("preflight", asked, first)


def prepare(cases: list[Case], options: RunOptions) -> tuple[list[Case], RunOptions]:
    """Check what would otherwise fail late, once: the options (the rank count a hostfile
    sets), the hosts, the strategies; return cases with absolute strategy names."""
    options = prepare_options(options)
    return prepare_cases(cases, options), options


def prepare_options(options: RunOptions) -> RunOptions:
    """The options checked, with the rank count a hostfile sets, and the hosts (see
    `prepare`)."""
    ranks = rank_count(options.ranks, options.timeout, options.backend, options.hostfile)
    options = dataclasses.replace(options, ranks=ranks)
    if options.repeats < 0:
        raise HarnessError(f"--repeats must be 0 or more, got {options.repeats}")
    if options.reference not in (SINGLE, GOLDEN):
        resolve(options.reference)
        options = dataclasses.replace(options, reference=normalize(options.reference))
    if options.ranks > 1:
        find_launcher(options.python)
    if options.impl:
        # Here too, so what the zoo supports is read off the implementation under test.
        from harness.models.impl import install

        install(options.impl)
    if options.hostfile is not None or options.python is not None:
        check_hosts(options.target())
    return options


def prepare_cases(cases: list[Case], options: RunOptions) -> list[Case]:
    """Cases with absolute strategy names, checked against prepared options (see
    `prepare`): a strategy that does not import, a context too short, a rule broken by
    cases asked for by name."""
    checked = []
    for case in cases:
        name = normalize(case.strategy)
        if name not in BUILTIN:
            resolve(name)  # an external strategy that does not import fails here, once
        case = Case.from_dict({**case.to_dict(), "strategy": name})
        if not case.checkpoint and support(case.arch).available:
            case.check_context(tiny_config(case))  # a real checkpoint's context is ample
        if options.strict and unavailable(case) is None:
            # Asked for by name: a rule the ranks break is the user's mistake, not a skip;
            # a strategy the installed mlx-lm lacks for the architecture stays a skip.
            violation = preflight_violation(case, options.ranks)
            if violation:
                raise HarnessError(violation)
        checked.append(case)
    return checked
