"""`harness props`: check the shard/unshard invariants of mlx's sharding helpers."""

from __future__ import annotations

from typing import Annotated

import typer

from harness import render
from harness.commands.options import Backend, Hostfile
from harness.errors import HarnessError


def props(
    ranks: Annotated[
        int,
        typer.Option(
            "--ranks", "-n", help="Number of ranks (1 simulates 1 to 8 ranks in-process)."
        ),
    ] = 1,
    backend: Backend = None,
    hostfile: Hostfile = None,
    max_examples: Annotated[
        int, typer.Option("--max-examples", help="Examples hypothesis draws per property.")
    ] = 25,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds the launched ranks may take to start, and for one property."),
    ] = 300,
) -> None:
    """Check mlx's sharding helpers against shard/unshard invariants drawn by hypothesis.

    Exit 1 if any property fails.

    Example: harness props --ranks 2
    """
    if max_examples < 1:
        raise HarnessError(f"--max-examples must be at least 1, got {max_examples}")
    from harness.props import run_props  # loads mlx: only when properties run

    report = run_props(ranks, backend, hostfile, max_examples, timeout)
    out = render.console()
    out.print(render.props_table(report))
    if report.error:
        out.print(f"run failed: {report.error}", markup=False)
    out.print(render.props_summary(report), markup=False)
    raise typer.Exit(0 if report.ok else 1)
