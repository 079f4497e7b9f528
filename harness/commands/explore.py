"""`harness explore`: search scenarios for sharding bugs (hypothesis, in this process; the
ranks run each example); `harness explore export`: the shrunk failures kept as a suite."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer

from harness import render, suites
from harness.commands.options import (
    DEFAULT_DB,
    Arch,
    Backend,
    Db,
    Hostfile,
    Impl,
    Python,
    Ranks,
    Suite,
    Timeout,
    command_line,
)
from harness.errors import HarnessError
from harness.models import impl
from harness.records import store

# The group's help is its callback's docstring (the search itself), with its example.
app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


def _per_minute(count: int, seconds: float) -> str:
    return f"{count / seconds * 60:.1f}" if seconds > 0 else "-"


def _pairs(suite: str | None, arch: list[str] | None, strategy: str | None, precision):
    """(arch, strategy or None, precisions, tolerance) to explore, from a suite or --arch,
    and what a suite's known failures leave out: `(target, why)` for each precision a case
    of the suite marks as a known failure of its strategy (an upstream bug the search would
    only find again); `--strategy` replaces the suite's, and its marks with them. A suite's
    target is held to the loosest tolerance its cases give that architecture and strategy."""
    if (suite is None) == (not arch):
        raise HarnessError("give either --suite NAME or one or more --arch NAME")
    if arch:
        return [(name, strategy, list(precision or ["fp32"]), ()) for name in arch], []
    grouped: dict[tuple[str, str], list[str]] = {}
    known: dict[tuple[str, str, str], str] = {}
    loosest: dict[tuple[str, str], dict[str, float]] = {}
    for case in suites.load_suite(suite):
        key = (case.arch, strategy or case.strategy)
        precisions = grouped.setdefault(key, [])
        if case.precision not in precisions:
            precisions.append(case.precision)
        if case.known_failure and strategy is None:
            known[(*key, case.precision)] = case.known_failure
        tolerance = loosest.setdefault(key, {})
        for name, value in case.tolerance.items():
            tolerance[name] = max(value, tolerance.get(name, value))
    pairs, skipped = [], []
    for (a, s), p in grouped.items():
        wanted = list(precision or p)
        left = [label for label in wanted if (a, s, label) not in known]
        skipped += [
            (f"{a}/{s}/{label}", f"known failure: {known[(a, s, label)]}")
            for label in wanted
            if label not in left
        ]
        if left:
            pairs.append((a, s, left, tuple(sorted(loosest[(a, s)].items()))))
    return pairs, skipped


@app.callback()
def explore(
    ctx: typer.Context,
    suite: Suite = None,
    arch: Arch = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="tp, pp, or pkg.module:fn / file.py:fn (default: tp and pp where supported)."
        ),
    ] = None,
    precision: Annotated[
        list[str] | None,
        typer.Option(
            "--precision", "-p", help="fp32, q4, q8, q4-bf16 (repeatable: the search draws one)."
        ),
    ] = None,
    ranks: Ranks = 2,
    budget: Annotated[
        float,
        typer.Option(
            help="Seconds of search, shared by the targets (shrinking may add up to as much)."
        ),
    ] = 300.0,
    seed: Annotated[
        int | None, typer.Option(help="hypothesis's seed (default: a random one, printed).")
    ] = None,
    db: Db = DEFAULT_DB,
    backend: Backend = None,
    hostfile: Hostfile = None,
    python: Python = None,
    impl_files: Impl = None,
    timeout: Timeout = 60.0,
) -> None:
    """Search batch widths, cache boundaries and serving programs for sharding bugs.

    Each example runs on the ranks and is judged as `harness run` judges a case; a failure
    is shrunk to its smallest form, explained by its neighbours and printed as one
    `harness run` command. Exit 0 nothing found, 1 a failure found.

    Example: harness explore --arch qwen3_moe --ranks 2 --budget 300 --seed 1
    """
    if ctx.invoked_subcommand is not None:
        return
    from harness.explore.runner import explore as run_explore
    from harness.explore.runner import nothing_to_explore, plan_targets

    options, run_options = setup(
        ranks, budget, seed, db, backend, hostfile, python, impl_files, timeout
    )
    seed = options.seed
    pairs, skipped = _pairs(suite, arch, strategy, precision)
    targets = []
    for name, chosen, precisions, tolerance in pairs:
        found, why = plan_targets([name], chosen, precisions, ranks, tolerance)
        targets += found
        skipped += why
    if not targets:
        raise nothing_to_explore(ranks, skipped)
    out = render.console()
    out.print(
        f"explore: seed {seed} (--seed {seed} repeats the search), budget {budget:g}s over "
        f"{len(targets)} target(s) on {ranks} rank(s)",
        markup=False,
    )
    for key, why in skipped:
        out.print(f"skipped {key}: {why}", markup=False, soft_wrap=True)
    database = store.open_db(db)
    explored = run_explore(
        targets,
        options,
        run_options,
        database,
        command=command_line(ctx, "explore"),
        on_searched=lambda searched: show(out, searched, options.flags),
    )
    out.print(
        f"{explored.examples} examples, {explored.operations} operations in "
        f"{explored.seconds:.1f}s: {_per_minute(explored.examples, explored.seconds)} "
        f"examples/min, {_per_minute(explored.operations, explored.seconds)} operations/min, "
        f"{explored.launches} launch(es); {len(explored.failures)} failure(s); "
        f"run {explored.run_id} stored in {db}",
        markup=False,
        soft_wrap=True,
    )
    raise typer.Exit(1 if explored.failures else 0)


def setup(ranks, budget, seed, db, backend, hostfile, python, impl_files, timeout):
    """The explore options and the ranks' run options, from the command line; a budget of
    0 or less is one sentence before anything is planned."""
    # Imported here: the search loads mlx and mlx-lm, which `export` never needs.
    from harness.explore import repro
    from harness.explore.runner import ExploreOptions
    from harness.run.parent.plan import RunOptions

    options = ExploreOptions(
        budget=budget,
        seed=random.SystemRandom().randrange(2**32) if seed is None else seed,
        db_path=Path(db),
        flags=repro.RunFlags(ranks, hostfile, backend, python, tuple(impl_files or ())),
    )
    run_options = RunOptions(
        ranks=ranks,
        backend=backend,
        hostfile=hostfile,
        timeout=timeout,
        repeats=0,
        # No hidden states per layer at fp32: the search needs verdicts and locations, and
        # ran 40 examples/min without them against 29 with them here (qwen3_moe, tp, 2
        # ranks); the printed `harness run` command captures them for the shrunk failure.
        # A low-precision example captures them anyway: its verdict tells a router flip of
        # rounding's from a bug by them (run.rank.one_case).
        capture=False,
        goldens=None,
        python=python,
        impl=impl.parse(impl_files),
    )
    return options, run_options


def show(out, searched, flags) -> None:
    """One target's search: its rate, and a failure with its shrunk form, what was
    learned and the command that reproduces it."""
    from harness.explore.runner import reproduction
    from harness.scenario import label

    rate = (
        f"{searched.examples} examples, {searched.operations} operations in "
        f"{searched.seconds:.1f}s ({_per_minute(searched.examples, searched.seconds)} examples/min)"
    )
    found = searched.found
    if searched.skipped:
        rate += f", {searched.skipped} skipped ({searched.skip_reason})"
    if found is None:
        spent = " (hypothesis ran out of examples first)" if searched.exhausted else ""
        out.print(
            f"{searched.target.key}: {rate}: nothing found{spent}", markup=False, soft_wrap=True
        )
        return
    result = found.result
    lines = [
        f"{searched.target.key}: {rate}: FAILED: {result.status}: {result.reason or ''}",
        f"  first seen: {label(found.first_seen.scenario)} at {found.first_seen.precision}",
        f"  shrunk ({found.shrinks} smaller failing examples): "
        f"{label(found.example.scenario)} at {found.example.precision}",
    ]
    if found.learned:
        lines.append("  learned: " + "; ".join(found.learned))
    lines.append(f"  reproduce: {reproduction(found, flags)}")
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="The suite file to write.")],
    db: Db = DEFAULT_DB,
) -> None:
    """Write every shrunk failure explore has kept in the store as a suite.

    Example: harness explore export --out found.toml && harness run --suite found.toml --ranks 2
    """
    from harness.explore.corpus import export as write_suite
    from harness.records import rundiff

    count = write_suite(rundiff.open_existing(db), out)
    print(
        f"{count} failure(s) written to {out}; run them with: harness run --suite {out} --ranks 2"
    )
