"""`harness golden record | verify | update | diff | pull`: the golden lifecycle.

The run layer (mlx, mlx-lm) is imported inside the commands that compute references."""

from __future__ import annotations

from typing import Annotated

import typer

from harness import paths, render
from harness.case import Case
from harness.commands.options import Arch, GoldensDir, Impl, Precision, Suite
from harness.commands.select import select_cases
from harness.errors import HarnessError
from harness.models import impl
from harness.service.pull import pull as pull_goldens
from harness.status import GoldenStatus

app = typer.Typer(
    help="Record, verify, update and diff stored reference outputs.", no_args_is_help=True
)


def _cases(suite: str | None, arch: list[str] | None, precision: list[str] | None) -> list[Case]:
    return select_cases(suite, arch, "none", precision)


@app.command()
def record(
    suite: Suite = None,
    arch: Arch = None,
    precision: Precision = None,
    directory: GoldensDir = None,
) -> None:
    """Write the goldens a suite is missing; existing goldens are never touched.

    Example: harness golden record --suite moe
    """
    from harness.run.rank import golden_lifecycle

    target = paths.goldens(directory).writable()
    actions = golden_lifecycle.record(_cases(suite, arch, precision), target)
    _print(actions)


@app.command()
def verify(
    suite: Suite = None,
    arch: Arch = None,
    precision: Precision = None,
    directory: GoldensDir = None,
    impl_files: Impl = None,
) -> None:
    """Recompute references and hold them against the goldens (all stored ones by default).

    Exit 1 when a golden is missing, corrupt or differs; a mismatch writes an `obtained`
    file beside the golden. A case this mlx-lm cannot run is listed and skipped.

    Example: harness golden verify
    """
    from harness.run.rank import golden_lifecycle

    impl.install(impl.parse(impl_files))
    cases = _cases(suite, arch, precision) if (suite or arch) else None
    source = paths.goldens(directory)
    actions = golden_lifecycle.verify(cases, source.directory)
    if not actions:
        raise HarnessError(
            f"no goldens in {source.directory}; record some with "
            "'harness golden record --suite moe'"
        )
    render.console().print(source.describe(), markup=False, soft_wrap=True)
    _print(actions)
    changed = sorted({a.case.arch for a in actions if a.case and a.status == GoldenStatus.MISMATCH})
    if changed:
        render.console().print(f"changed numerically: {', '.join(changed)}", markup=False)
    ok = (GoldenStatus.MATCH, GoldenStatus.UNAVAILABLE)
    raise typer.Exit(0 if all(a.status in ok for a in actions) else 1)


@app.command()
def update(
    reason: Annotated[
        str, typer.Option("--reason", help="Why the goldens change (kept in each sidecar).")
    ],
    suite: Suite = None,
    arch: Arch = None,
    precision: Precision = None,
    directory: GoldensDir = None,
) -> None:
    """Rewrite goldens on purpose, keeping the reason and the replaced hash in the sidecar.

    Example: harness golden update --suite moe --reason "mlx-lm 0.33 changed RoPE scaling"
    """
    from harness.run.rank import golden_lifecycle

    target = paths.goldens(directory).writable()
    _print(golden_lifecycle.update(_cases(suite, arch, precision), reason, target))


@app.command()
def diff(
    key: Annotated[str, typer.Argument(help="A golden's case key (see 'harness golden verify').")],
    directory: GoldensDir = None,
) -> None:
    """Compare a golden with its `obtained` file (or with a fresh reference if none).

    Example: harness golden diff qwen3_moe-fp32-0123456789ab
    """
    from harness.run.rank import golden_lifecycle

    summary = golden_lifecycle.diff_golden(key, paths.goldens(directory).directory)
    render.console().print(render.golden_diff(summary), markup=False)
    raise typer.Exit(0 if summary.check.status == GoldenStatus.MATCH else 1)


def _print(actions: list) -> None:
    out = render.console()
    out.print(render.golden_table(actions))


@app.command()
def pull(
    url: Annotated[str, typer.Argument(help="The service, e.g. http://127.0.0.1:8001")],
    suite: Suite = None,
    arch: Arch = None,
    directory: GoldensDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace local goldens whose content differs.")
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why local goldens are replaced (with --force).")
    ] = None,
) -> None:
    """Fetch goldens from a running 'harness serve' into the goldens directory, verified.

    Example: harness golden pull http://127.0.0.1:8001 --suite moe
    """
    if suite and arch:
        raise HarnessError("give --suite or --arch, not both")
    if force != bool(reason):
        raise HarnessError("replacing local goldens needs both --force and --reason 'why'")
    target = paths.goldens(directory).writable()
    keys = {case.key() for case in _cases(suite, None, None)} if suite else None
    pulled = pull_goldens(url, target, keys, arch, reason)
    out = render.console()
    out.print(render.pulled_table(pulled))
    out.print(render.pulled_summary(pulled, url, target), markup=False)
