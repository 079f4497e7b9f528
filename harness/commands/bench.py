"""`harness bench`: prompt and generation tok/s through mlx-lm's own generation path, per
strategy side by side, with `mlx_lm.benchmark`'s flags and defaults."""

from __future__ import annotations

from typing import Annotated

import typer

from harness import render, suites
from harness.case import BenchCase
from harness.commands.options import (
    DEFAULT_DB,
    Backend,
    Db,
    Hostfile,
    Python,
    Ranks,
    command_line,
)
from harness.errors import HarnessError
from harness.records import store
from harness.records.bench import result_line, row_line, side_by_side
from harness.status import RunStatus


def select_benches(
    suite: str | None,
    arch: str | None,
    checkpoint: str | None,
    layout: str | None,
    precision: str,
    strategies: list[str] | None,
    shapes: dict,
    counts: dict,
    ranks: int,
) -> list[BenchCase]:
    """Bench cases from a suite's [[bench]] entries, or one model under each strategy."""
    if suite is not None:
        if arch or checkpoint or layout:
            raise HarnessError("give --suite or a model (--arch / --checkpoint), not both")
        return suites.load_bench(suite, ranks)
    if checkpoint and layout:
        raise HarnessError("give --layout (a zoo model written to disk) or --checkpoint, not both")
    if checkpoint and arch is None:
        from harness.models.checkpoint.load import resolve_checkpoint
        from harness.models.checkpoint.read import read_config

        # A checkpoint names its own architecture.
        arch = read_config(resolve_checkpoint(checkpoint))["model_type"]
    if arch is None:
        raise HarnessError("give --arch NAME (with --layout), --checkpoint PATH, or --suite NAME")
    model = {"arch": arch, "precision": precision}
    if checkpoint:
        model["checkpoint"] = checkpoint
    if layout:
        model["layout"] = layout
    return suites.bench_cases(
        model, strategies or suites.default_strategies(ranks), shapes, counts, "command line"
    )


def bench(
    ctx: typer.Context,
    arch: Annotated[str | None, typer.Option("--arch", "-a", help="Zoo architecture.")] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="A checkpoint: local path or a repo id in the local HF cache."),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(help="Write the zoo model in this layout and load it through mlx-lm."),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, q4, q8, q4-bf16 (a layout's bits must agree).")
    ] = "fp32",
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            help="none, tp, pp, pkg.module:fn or file.py:fn; repeat to compare side by side "
            "(default: none at 1 rank, tp above, as mlx_lm.benchmark)."
        ),
    ] = None,
    prompt_tokens: Annotated[
        int, typer.Option("--prompt-tokens", "-p", help="Length of each prompt.")
    ] = BenchCase.prompt_tokens,
    generation_tokens: Annotated[
        int, typer.Option("--generation-tokens", "-g", help="Tokens generated per prompt.")
    ] = BenchCase.generation_tokens,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Prompts generated together.")
    ] = BenchCase.batch_size,
    prefill_step_size: Annotated[
        int, typer.Option(help="Prompt tokens per prefill chunk.")
    ] = BenchCase.prefill_step_size,
    num_trials: Annotated[
        # mlx_lm.benchmark's -n: here -n is --ranks, as in every command.
        int, typer.Option("--num-trials", help="Timed trials per strategy.")
    ] = BenchCase.num_trials,
    warmup: Annotated[
        int, typer.Option(help="Untimed generations before the trials.")
    ] = BenchCase.warmup,
    suite: Annotated[
        str | None, typer.Option("--suite", "-s", help="A suite's [[bench]] entries instead.")
    ] = None,
    ranks: Ranks = 1,
    backend: Backend = None,
    hostfile: Hostfile = None,
    python: Python = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds one bench case (load, warm-up, trials) may take.")
    ] = 600.0,
    db: Db = DEFAULT_DB,
) -> None:
    """Time mlx-lm's generation (prompt and generation tok/s, peak memory per rank) per strategy.

    Flags and defaults are mlx_lm.benchmark's, so a number can be checked by hand.

    Example: harness bench --arch qwen3_moe --ranks 2 --strategy tp --strategy pp -p 128 -g 32
    """
    shapes = {
        "prompt_tokens": prompt_tokens,
        "generation_tokens": generation_tokens,
        "batch_size": batch_size,
        "prefill_step_size": prefill_step_size,
    }
    counts = {"num_trials": num_trials, "warmup": warmup}
    # Imported here: `harness report` and the other commands load no mlx.
    from harness.run.parent.bench import BenchOptions, run_bench, validate
    from harness.run.parent.loop import run_loop
    from harness.run.parent.target import hostfile_ranks

    if hostfile is not None:
        ranks = hostfile_ranks(hostfile)  # the hostfile sets the rank count
    benches = select_benches(
        suite, arch, checkpoint, layout, precision, strategy, shapes, counts, ranks
    )
    options = BenchOptions(ranks, backend, hostfile, timeout, python=python)
    benches, options = validate(benches, options)
    out = render.console()
    lines = []

    def show(result) -> None:
        lines.append(result_line(result))
        out.print(render.bench_line(lines[-1]))

    record = run_loop(
        run_bench(benches, options),
        options,
        store.open_db(db),
        kind="bench",
        suite=suite or benches[0].label(),
        command=command_line(ctx, "bench"),
        on_result=show,
    )
    run_id, counts = record.run_id, record.counts
    title = f"bench run {run_id} on {options.ranks} rank(s): rank 0's median (min-max over trials)"
    out.print(render.bench_table(side_by_side(lines), title))
    out.print(
        f"{counts['cases']} bench cases, {counts['failed']} failed, in "
        f"{record.seconds:.1f}s; run {run_id} stored in {db}",
        markup=False,
    )
    raise typer.Exit(1 if record.failed else 0)


def show_run(database, run: dict) -> bool:
    """Print a stored bench run side by side (for `harness report`); whether any failed."""
    _, stored = store.get_run(database, run["id"])
    lines = side_by_side([row_line(row, row["trials"]) for row in stored])
    out = render.console()
    out.print(render.run_header(run), markup=False)
    out.print(render.bench_table(lines, f"bench run {run['id']} on {run['ranks']} rank(s)"))
    return run["status"] == RunStatus.FAILED
