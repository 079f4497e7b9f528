"""`harness archs` and `harness preflight`: what the zoo holds and what fits a rank count."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness import render
from harness.errors import HarnessError


def archs() -> None:
    """List the architecture zoo and what the installed mlx-lm supports for each.

    Example: harness archs
    """
    from harness.zoo import ARCHS, support

    render.console().print(render.archs_table(ARCHS, support))


def preflight(
    arch: Annotated[
        str | None, typer.Option("--arch", "-a", help="Architecture of the zoo.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A checkpoint's config.json instead of --arch.")
    ] = None,
    ranks: Annotated[int, typer.Option("--ranks", "-n", help="Number of ranks.")] = 2,
    strategy: Annotated[str, typer.Option(help="tp or pp.")] = "tp",
    quant: Annotated[int | None, typer.Option(help="Quantization bits (4 or 8).")] = None,
    group_size: Annotated[int, typer.Option(help="Quantization group size.")] = 32,
) -> None:
    """Check the divisibility and shape rules of a model at a rank count before launching.

    Example: harness preflight --arch qwen3_moe --ranks 4 --strategy tp --quant 4
    """
    from harness import preflight as rules
    from harness.case import Case
    from harness.models.build import tiny_config
    from harness.models.checkpoint.read import read_config

    if (arch is None) == (config is None):
        raise HarnessError("give either --arch NAME or --config path/to/config.json")
    if arch is not None:
        model_config, what = tiny_config(Case(arch)), arch
    else:
        model_config, what = read_config(config), str(config)
    rules.require(model_config, strategy, ranks, quant, group_size)
    render.console().print(f"ok: {what} fits {ranks} rank(s) under {strategy}", markup=False)
