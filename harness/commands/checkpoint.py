"""`harness checkpoint write | check | layouts`: tiny checkpoints in real layouts, and
checking that a checkpoint loads through mlx-lm with every key accounted for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness import render

app = typer.Typer(
    help="Write tiny checkpoints in real on-disk layouts; check checkpoints load through mlx-lm.",
    no_args_is_help=True,
)


@app.command()
def write(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture of the zoo.")],
    layout: Annotated[
        str, typer.Option("--layout", "-l", help="Layout (harness checkpoint layouts).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="New or empty directory to write.")],
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
    quant: Annotated[
        int | None, typer.Option(help="Quantization bits (4 or 8), mlx layout.")
    ] = None,
    group_size: Annotated[int, typer.Option(help="Quantization group size.")] = 32,
) -> None:
    """Write the zoo's tiny model of an architecture as a checkpoint in a real layout.

    Example: harness checkpoint write --arch qwen3_moe --layout hf-per-expert --out /tmp/qwen3_moe
    """
    from harness.models import checkpoint  # loads mlx-lm: only when the command runs

    path = checkpoint.write_checkpoint(arch, layout, out, seed, quant, group_size)
    render.console().print(f"wrote {arch} in layout {layout} to {path}", markup=False)


@app.command()
def check(
    path: Annotated[
        str, typer.Argument(help="Checkpoint directory, or a repo id in the local HF cache.")
    ],
) -> None:
    """Load a checkpoint through mlx-lm and check that every key is consumed and every
    parameter loaded; exit 1 when keys are dropped, missing or mismatched.

    Example: harness checkpoint check ~/models/Qwen3-30B-A3B-4bit
    """
    from harness.models import checkpoint  # loads mlx-lm: only when the command runs

    coverage = checkpoint.check_checkpoint(path)
    render.console().print(coverage.verdict(), markup=False, soft_wrap=True)
    raise typer.Exit(0 if coverage.ok else 1)


@app.command()
def layouts(
    arch: Annotated[
        str | None, typer.Option("--arch", "-a", help="Only this architecture's.")
    ] = None,
) -> None:
    """List the checkpoint layouts the harness writes (for one architecture, or all).

    Example: harness checkpoint layouts --arch deepseek_v3
    """
    from harness.models import checkpoint  # loads mlx-lm: only when the command runs

    names = checkpoint.layouts_for(arch) if arch else list(checkpoint.LAYOUTS)
    out = render.console()
    for name in names:
        out.print(f"{name:15s} {checkpoint.LAYOUTS[name].description}", markup=False)
