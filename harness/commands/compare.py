"""`harness compare`: what changed between two runs, exit 1 when anything regressed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness import render
from harness.errors import HarnessError
from harness.records import rundiff, store


def compare(
    run_a: Annotated[str, typer.Argument(help="Baseline run: an id, or a suite for its latest.")],
    run_b: Annotated[str, typer.Argument(help="Run to judge: an id, or a suite for its latest.")],
    db: Annotated[
        list[Path] | None,
        typer.Option(
            "--db", help="Database of both runs; give it twice for RUN_A's and RUN_B's files."
        ),
    ] = None,
) -> None:
    """Compare two runs: status flips, new diagnoses, golden changes, tok/s drops beyond noise.

    Bench runs (harness bench) compare with bench runs: prompt and generation tok/s.

    Example: harness compare moe moe --db last-night.db --db harness.db
    """
    paths = db or [Path(store.DEFAULT_DB)]
    if len(paths) > 2:
        raise HarnessError("give --db once (both runs) or twice (RUN_A's file, RUN_B's file)")
    path_a, path_b = paths[0], paths[-1]
    db_a, db_b = rundiff.open_existing(path_a), rundiff.open_existing(path_b)
    result = rundiff.compare_stored(db_a, run_a, str(path_a), db_b, run_b, str(path_b))
    out = render.console()
    out.print(render.comparison_table(result))
    for line in result.notes:
        out.print(f"note: {line}", markup=False)
    out.print(render.comparison_summary(result), markup=False)
    raise typer.Exit(1 if result.regressed else 0)
