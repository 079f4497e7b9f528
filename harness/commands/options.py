"""Options several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.records import store

Ranks = Annotated[int, typer.Option("--ranks", "-n", help="Number of ranks (1 runs in-process).")]
Db = Annotated[str, typer.Option("--db", help="SQLite file for results.")]
Backend = Annotated[str | None, typer.Option(help="mlx.launch backend: ring, mpi, jaccl, nccl.")]
Hostfile = Annotated[
    str | None, typer.Option(help="mlx.launch hostfile for a cluster (sets the rank count).")
]
Timeout = Annotated[float, typer.Option(help="Seconds each case may take on the ranks.")]
Suite = Annotated[str | None, typer.Option("--suite", "-s", help="Suite name or .toml path.")]
Arch = Annotated[list[str] | None, typer.Option("--arch", "-a", help="Architecture (repeatable).")]
Precision = Annotated[
    list[str] | None,
    typer.Option("--precision", "-p", help="With --arch: fp32, q4, q8, q4-bf16 (repeatable)."),
]
Python = Annotated[
    str | None,
    typer.Option("--python", help="Interpreter the ranks run under (default: this one)."),
]
Impl = Annotated[
    list[str] | None,
    typer.Option("--impl", help="MODEL_TYPE=file.py: build that model type from another file."),
]
GoldensDir = Annotated[
    Path | None,
    typer.Option(
        "--goldens",
        "--dir",
        help="Goldens directory (default: $HARNESS_GOLDENS, else ./goldens if present, "
        "else the goldens the harness ships, read-only when installed).",
    ),
]

DEFAULT_DB = store.DEFAULT_DB


def command_line(ctx: typer.Context, default: str) -> list[str]:
    """The command as the user typed it, for the stored run."""
    return ["harness", *((ctx.obj or {}).get("argv", [default]))]
