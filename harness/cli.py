"""The `harness` command: a thin typer layer over the library.

Every user mistake is a HarnessError: one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from harness import render
from harness.commands import checkpoint, golden, props
from harness.commands.select import select_cases
from harness.commands.selftest import selftest
from harness.errors import HarnessError
from harness.records import goldens, store
from harness.records.result import case_row
from harness.records.shapes import shape_summary
from harness.run import runner

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Correctness regression tests and goldens for sharded MLX inference.",
)

app.add_typer(golden.app, name="golden")
app.add_typer(checkpoint.app, name="checkpoint")
app.command(name="props")(props.props)
app.command()(selftest)

Ranks = Annotated[int, typer.Option("--ranks", "-n", help="Number of ranks (1 runs in-process).")]
Db = Annotated[str, typer.Option("--db", help="SQLite file for results.")]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@app.command()
def run(
    ctx: typer.Context,
    suite: Annotated[
        str | None, typer.Option("--suite", "-s", help="Suite name in suites/ or a .toml path.")
    ] = None,
    arch: Annotated[
        list[str] | None,
        typer.Option("--arch", "-a", help="Architecture (repeatable) instead of a suite."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="none, tp, pp, or pkg.module:fn / file.py:fn; overrides the suite's."),
    ] = None,
    precision: Annotated[
        list[str] | None,
        typer.Option("--precision", "-p", help="With --arch: fp32, q4, q8, q4-bf16 (repeatable)."),
    ] = None,
    shapes: Annotated[
        list[str] | None,
        typer.Option(
            "--shapes", help="Shape profiles (repeatable): short, single-stream, long-chunked, ..."
        ),
    ] = None,
    ranks: Ranks = 1,
    backend: Annotated[
        str | None, typer.Option(help="mlx.launch backend: ring, mpi, jaccl, nccl.")
    ] = None,
    hostfile: Annotated[
        str | None, typer.Option(help="mlx.launch hostfile for a cluster (sets the rank count).")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Job folder; on a cluster one every host sees at the same path."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each case may take on the ranks.")] = 60.0,
    repeats: Annotated[int, typer.Option(help="Timed repeats after one warm-up.")] = 3,
    db: Db = store.DEFAULT_DB,
    goldens_dir: Annotated[
        Path, typer.Option("--goldens", help="Goldens directory to compare references with.")
    ] = goldens.GOLDENS_DIR,
    no_goldens: Annotated[
        bool, typer.Option("--no-goldens", help="Do not compare with goldens.")
    ] = False,
    record_missing: Annotated[
        bool, typer.Option("--record-missing", help="Write goldens that are missing.")
    ] = False,
) -> None:
    """Run a suite (or architectures) sharded across ranks; compare with single-rank references.

    Example: harness run --suite moe --ranks 2 --shapes short --shapes long-chunked
    """
    cases = select_cases(suite, arch, strategy, precision, shapes)
    options = runner.RunOptions(
        ranks=ranks,
        backend=backend,
        hostfile=hostfile,
        timeout=timeout,
        repeats=repeats,
        goldens=None if no_goldens else goldens_dir,
        record_missing=record_missing,
        workdir=workdir,
    )
    cases = runner.validate(cases, options)
    if arch:
        # Asked for by name: a rule the ranks break is the user's mistake, not a skip;
        # a strategy the installed mlx-lm lacks for the architecture stays a skip.
        for case in cases:
            violation = runner.preflight_violation(case, options.ranks)
            if violation and runner.skip_reason(case, options.ranks) == violation:
                raise HarnessError(violation)
    database = store.open_db(db)
    command = ["harness", *(ctx.obj or {}).get("argv", [])]
    run_id = store.start_run(
        database, "run", suite or ",".join(arch or []), options.ranks, backend, hostfile, command
    )
    out = render.console()
    started, results, status = time.perf_counter(), [], "interrupted"
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for result in runner.run(cases, options):
            store.record_case(database, run_id, result)
            results.append(result)
            out.print(render.progress_line(result, len(cases)))
        status = "failed" if any(r.failed for r in results) else "passed"
    finally:
        counts = store.finish_run(database, run_id, status)
    rows = [case_row(r) for r in results]
    out.print(
        render.verdict_table(rows, f"run {run_id}: {suite or 'archs'} on {options.ranks} rank(s)")
    )
    for line in render.failure_details(rows):
        out.print(line, markup=False)
    for line in shape_summary(results):
        out.print(f"shapes: {line}", markup=False, soft_wrap=True)
    out.print(render.summary(counts, time.perf_counter() - started, db, run_id))
    raise typer.Exit(1 if status == "failed" else 0)


@app.command()
def archs() -> None:
    """List the architecture zoo and what the installed mlx-lm supports for each.

    Example: harness archs
    """
    from harness.zoo import ARCHS, support

    table = render.archs_table(ARCHS, support)
    render.console().print(table)


@app.command(name="preflight")
def preflight_command(
    arch: Annotated[
        str | None, typer.Option("--arch", "-a", help="Architecture of the zoo.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A checkpoint's config.json instead of --arch.")
    ] = None,
    ranks: Ranks = 2,
    strategy: Annotated[str, typer.Option(help="tp or pp.")] = "tp",
    quant: Annotated[int | None, typer.Option(help="Quantization bits (4 or 8).")] = None,
    group_size: Annotated[int, typer.Option(help="Quantization group size.")] = 32,
) -> None:
    """Check the divisibility and shape rules of a model at a rank count before launching.

    Example: harness preflight --arch qwen3_moe --ranks 4 --strategy tp --quant 4
    """
    from harness import preflight
    from harness.case import Case
    from harness.models.build import tiny_config
    from harness.models.checkpoint.read import read_config

    if (arch is None) == (config is None):
        raise HarnessError("give either --arch NAME or --config path/to/config.json")
    if arch is not None:
        model_config = tiny_config(Case(arch))
        what = arch
    else:
        model_config = read_config(config)
        what = str(config)
    preflight.require(model_config, strategy, ranks, quant, group_size)
    render.console().print(f"ok: {what} fits {ranks} rank(s) under {strategy}", markup=False)


@app.command()
def report(
    run_id: Annotated[
        int | None, typer.Option("--run", help="Run id (default: the latest).")
    ] = None,
    db: Db = store.DEFAULT_DB,
) -> None:
    """Print a stored run: its environment and the verdict of every case.

    Example: harness report --run 3
    """
    database = store.open_db(db)
    run, cases = store.get_run(database, run_id)
    out = render.console()
    out.print(render.run_header(run), markup=False)
    out.print(
        render.verdict_table(cases, f"run {run['id']}: {run['suite']} on {run['ranks']} rank(s)")
    )
    for line in render.failure_details(cases):
        out.print(line, markup=False)
    raise typer.Exit(1 if run["status"] == "failed" else 0)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: HarnessError becomes one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        app(args=argv, obj={"argv": argv})
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished cases are stored", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
