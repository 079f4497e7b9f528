"""`harness selftest`: run the fault catalog and show that every fault is caught with its
diagnosis and every control passes."""

from __future__ import annotations

from typing import Annotated

import typer

from harness import render
from harness.commands.options import DEFAULT_DB, Backend, Db, Hostfile, Timeout, command_line
from harness.errors import HarnessError
from harness.records import store
from harness.suites import parse_precision


def selftest(
    ctx: typer.Context,
    ranks: Annotated[int, typer.Option("--ranks", "-n", help="Number of ranks (at least 2).")] = 2,
    db: Db = DEFAULT_DB,
    timeout: Timeout = 60.0,
    all_archs: Annotated[
        bool,
        typer.Option(
            "--all-archs", help="Every architecture a fault applies to, not a representative few."
        ),
    ] = False,
    fault: Annotated[
        list[str] | None,
        typer.Option("--fault", "-f", help="Only this catalog entry (repeatable)."),
    ] = None,
    backend: Backend = None,
    hostfile: Hostfile = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help="Every entry at this precision instead of its own (e.g. q4-bf16).",
        ),
    ] = None,
    explore: Annotated[
        bool,
        typer.Option(
            "--explore",
            help="Prove harness explore instead: find and shrink every fault that records "
            "its smallest scenario; mlx-lm's tp and pp find nothing.",
        ),
    ] = False,
    budget: Annotated[
        float, typer.Option(help="With --explore: seconds of search per fault and architecture.")
    ] = 60.0,
    seed: Annotated[int | None, typer.Option(help="With --explore: hypothesis's seed.")] = None,
) -> None:
    """Prove the harness catches sharding bugs: run every cataloged fault and control, judge each.

    Exit 1 if a fault is missed or misdiagnosed, or a control raises a false alarm.

    Example: harness selftest --ranks 2
    """
    if explore:
        if precision is not None:
            raise HarnessError("--precision applies to the catalog run, not to --explore")
        _explore(ctx, ranks, db, timeout, all_archs, fault, backend, hostfile, budget, seed)
        return
    from harness.faults.selftest import run_selftest  # loads mlx: only when it runs

    if precision is not None:
        parse_precision(precision)  # an unknown label is one sentence before any launch

    out = render.console()
    database = store.open_db(db)
    command = command_line(ctx, "selftest")
    report = run_selftest(
        ranks,
        timeout=timeout,
        all_archs=all_archs,
        names=fault,
        backend=backend,
        hostfile=hostfile,
        database=database,
        command=command,
        progress=lambda v: out.print(render.selftest_line(v)),
        precision=precision,
    )
    out.print(
        render.selftest_table(
            report.faults, f"selftest run {report.run_id}: faults on {ranks} ranks"
        )
    )
    out.print(render.selftest_table(report.controls, "controls (correct sharding that must pass)"))
    for name, arch, why in report.not_applicable:
        out.print(f"not applicable: {name} on {arch}: {why}", markup=False)
    for v in report.verdicts:
        if not v.ok and v.detail:
            out.print(f"{v.verdict}: {v.fault} on {v.arch}: {v.detail}", markup=False)
    out.print(render.selftest_summary(report, db), markup=False)
    raise typer.Exit(0 if report.ok else 1)


def _explore(ctx, ranks, db, timeout, all_archs, names, backend, hostfile, budget, seed) -> None:
    """`--explore`: each searchable fault found and shrunk, the controls quiet."""
    from harness.commands.explore import setup, show
    from harness.explore.selftest import run_explore_selftest

    options, run_options = setup(ranks, budget, seed, db, backend, hostfile, None, None, timeout)
    out = render.console()
    out.print(f"selftest --explore: seed {options.seed}, {budget:g}s per target", markup=False)
    report = run_explore_selftest(
        ranks,
        budget,
        options,
        run_options,
        store.open_db(db),
        command=command_line(ctx, "selftest"),
        all_archs=all_archs,
        names=names,
        on_searched=lambda searched: show(out, searched, options.flags),
    )
    from harness.scenario import label

    for v in report.verdicts:
        found = v.searched.found
        shrunk = f"{label(found.example.scenario)}" if found else "nothing found"
        line = f"{v.verdict}: {v.name} on {v.arch}: {shrunk}"
        if v.expected is not None:
            line += f" (the catalog's smallest: {label(v.expected)})"
        out.print(line, markup=False, soft_wrap=True)
    for key, why in report.not_applicable:
        out.print(f"not applicable: {key}: {why}", markup=False, soft_wrap=True)
    good = sum(v.ok for v in report.verdicts)
    out.print(
        f"{good} of {len(report.verdicts)} as expected; {report.explored.examples} examples "
        f"in {report.explored.seconds:.1f}s; run {report.explored.run_id} stored in {db}",
        markup=False,
    )
    raise typer.Exit(0 if report.ok else 1)
