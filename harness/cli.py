"""The `harness` command: a thin typer layer over the library, one module per command
group in `harness.commands`.

Every user mistake is a HarnessError: one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from harness import __version__
from harness.commands import (
    bench,
    bisect,
    checkpoint,
    compare,
    explore,
    golden,
    inspect,
    props,
    run,
    selftest,
    serve,
)
from harness.errors import HarnessError
from harness.records.provenance import DISTRIBUTION, package_version

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Correctness regression tests and goldens for sharded MLX inference.",
)


def version_line() -> str:
    """This harness's version and the mlx and mlx-lm it runs with."""
    found = {name: package_version(name) or "not installed" for name in ("mlx", "mlx-lm")}
    return f"{DISTRIBUTION} {__version__} (mlx {found['mlx']}, mlx-lm {found['mlx-lm']})"


def _print_version(value: bool) -> None:
    if value:
        print(version_line())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print versions and exit."
        ),
    ] = False,
) -> None:
    # Options of `harness` itself, before any command; the help is the app's.
    pass


app.command()(run.run)
app.command()(run.report)
app.command()(inspect.archs)
app.command()(inspect.preflight)
app.add_typer(golden.app, name="golden")
app.add_typer(checkpoint.app, name="checkpoint")
app.add_typer(bisect.app, name="bisect")
app.add_typer(bisect.env_app, name="env")
app.command(name="diff-impl")(bisect.diff_impl)
app.command()(props.props)
app.command()(selftest.selftest)
app.command()(serve.serve)
app.command()(compare.compare)
app.command()(bench.bench)
app.add_typer(explore.app, name="explore")


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
