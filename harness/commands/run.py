"""`harness run` and `harness report`: run cases sharded across ranks; show a stored run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness import paths, render, suites
from harness.commands.options import (
    DEFAULT_DB,
    Arch,
    Backend,
    Db,
    GoldensDir,
    Hostfile,
    Impl,
    Precision,
    Python,
    Ranks,
    Suite,
    Timeout,
    command_line,
)
from harness.commands.select import select_cases
from harness.models import impl
from harness.records import junit, noise, rundiff, store, table
from harness.records.result import case_row
from harness.records.shape_summary import shape_summary
from harness.status import RunStatus


def run(
    ctx: typer.Context,
    suite: Suite = None,
    arch: Arch = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="none, tp, pp, or pkg.module:fn / file.py:fn; overrides the suite's."),
    ] = None,
    precision: Precision = None,
    shapes: Annotated[
        list[str] | None,
        typer.Option(
            "--shapes", help="Shape profiles (repeatable): short, single-stream, long-chunked, ..."
        ),
    ] = None,
    scenario: Annotated[
        str | None,
        typer.Option(
            help='A scenario as JSON (harness.scenario): {"kind": "batch", "prompts": [9, 300], '
            '"prefill_step": 32, "decode": 4} or {"kind": "serve", "prefill_step": 32, '
            '"ops": [...]}; every case runs it.'
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Weights seed (and a scenario's prompts) of every case, instead of theirs."
        ),
    ] = None,
    ranks: Ranks = 1,
    backend: Backend = None,
    hostfile: Hostfile = None,
    python: Python = None,
    impl_files: Impl = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Working directory of the ranks on every host (mlx.launch --cwd)."),
    ] = None,
    reference: Annotated[
        str,
        typer.Option(
            help="What each case is held against: single (the single-rank run, computed on "
            "the ranks), golden (its stored golden: for a model no host holds whole), or a "
            "strategy on the same ranks (e.g. pp)."
        ),
    ] = "single",
    timeout: Timeout = 60.0,
    repeats: Annotated[
        int, typer.Option(help="Timed repeats after one warm-up (0: no timings).")
    ] = 3,
    db: Db = DEFAULT_DB,
    goldens_dir: GoldensDir = None,
    no_goldens: Annotated[
        bool, typer.Option("--no-goldens", help="Do not compare with goldens.")
    ] = False,
    record_missing: Annotated[
        bool, typer.Option("--record-missing", help="Write goldens that are missing.")
    ] = False,
    junit_path: Annotated[
        Path | None, typer.Option("--junit", help="Also write JUnit XML, one testcase per case.")
    ] = None,
) -> None:
    """Run a suite (or architectures) sharded across ranks; compare with single-rank references.

    Example: harness run --suite moe --ranks 2 --shapes short --shapes long-chunked

    Example: harness run --arch qwen3_moe --strategy tp --ranks 2 --scenario
    '{"kind": "batch", "prompts": [3, 9, 250], "prefill_step": 32, "decode": 8}'
    """
    # Imported here: the run layer loads mlx and mlx-lm, which `report` never needs.
    from harness.run.parent.loop import run_cases
    from harness.run.parent.plan import RunOptions

    cases = select_cases(suite, arch, strategy, precision, shapes, scenario, seed)
    chosen = paths.goldens(goldens_dir)
    golden_dir = chosen.writable() if record_missing else chosen.directory
    options = RunOptions(
        ranks=ranks,
        backend=backend,
        hostfile=hostfile,
        timeout=timeout,
        repeats=repeats,
        goldens=None if no_goldens else golden_dir,
        record_missing=record_missing,
        reference=reference,
        python=python,
        impl=impl.parse(impl_files),
        workdir=workdir,
        strict=bool(arch),
    )
    database = store.open_db(db)
    out = render.console()
    if suite is not None:
        out.print(f"suite {suite}: {suites.suite_path(suite)}", markup=False, soft_wrap=True)
    if not no_goldens:
        out.print(chosen.describe(), markup=False, soft_wrap=True)
    total = len(cases)
    record = run_cases(
        cases,
        options,
        database,
        kind="run",
        suite=suites.series(suite, strategy) if suite is not None else ",".join(arch or []),
        command=command_line(ctx, "run"),
        on_result=lambda result: out.print(render.progress_line(result, total)),
    )
    if junit_path is not None:
        junit.write(junit_path, *store.get_run(database, record.run_id))
    rows = [case_row(r) for r in record.results]
    title = f"run {record.run_id}: {suite or 'archs'} on {record.options.ranks} rank(s)"
    out.print(render.verdict_table(rows, title))
    for line in render.failure_details(rows):
        out.print(line, markup=False)
    for line in shape_summary(record.results):
        out.print(f"shapes: {line}", markup=False, soft_wrap=True)
    if record.second_looks:
        out.print(
            f"timed again (tok/s under {noise.CLEAR}x its history in a part): "
            + ", ".join(record.second_looks),
            markup=False,
            soft_wrap=True,
        )
    out.print(render.summary(record.counts, record.seconds, db, record.run_id))
    raise typer.Exit(1 if record.failed else 0)


def report(
    run_spec: Annotated[
        str | None,
        typer.Option("--run", help="Run id, or a suite for its latest run (default: the latest)."),
    ] = None,
    db: Db = DEFAULT_DB,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print GitHub-flavoured markdown (CI summaries).")
    ] = False,
) -> None:
    """Print a stored run: its environment and the verdict of every case.

    Example: harness report --run 3
    """
    database = rundiff.open_existing(db)
    if run_spec is None:
        run, cases = store.get_run(database, None)
    else:
        run, cases = rundiff.resolve_run(database, run_spec, db)
    if run["kind"] == "bench":
        from harness.commands.bench import show_run

        raise typer.Exit(1 if show_run(database, run) else 0)
    if markdown:
        print(table.markdown(run, cases), end="")
        raise typer.Exit(1 if run["status"] == RunStatus.FAILED else 0)
    out = render.console()
    out.print(render.run_header(run), markup=False)
    out.print(
        render.verdict_table(cases, f"run {run['id']}: {run['suite']} on {run['ranks']} rank(s)")
    )
    for line in render.failure_details(cases):
        out.print(line, markup=False)
    raise typer.Exit(1 if run["status"] == RunStatus.FAILED else 0)
