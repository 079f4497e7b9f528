"""`harness bisect versions | commits | step`, `harness diff-impl`, `harness env list | prune`:
finding which mlx-lm release, commit or model file changed the numbers, and where."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from harness import paths, render
from harness.bisect import commits, envs, judge, sharded
from harness.bisect.versions import Step, bisect_versions
from harness.case import Case
from harness.commands.options import (
    Arch,
    Db,
    GoldensDir,
    Precision,
    Ranks,
    Suite,
    Timeout,
    command_line,
)
from harness.errors import HarnessError
from harness.models import impl
from harness.records import diagnose, store
from harness.records.ladder import Comparison
from harness.records.result import CaseResult
from harness.status import CaseStatus, StepVerdict

app = typer.Typer(
    help="Find the mlx-lm release or commit that changed a case's numbers.", no_args_is_help=True
)
env_app = typer.Typer(help="The cached environments bisects run in.", no_args_is_help=True)


def _say(out, text: str) -> None:
    # Plain text, one line each however long: paths and ladders are read whole.
    out.print(text, markup=False, soft_wrap=True)


def _cases(
    suite: str | None, arch: list[str] | None, precision: list[str] | None, ranks: int = 1
) -> list[Case]:
    from harness.commands.select import select_cases  # the zoo loads mlx: only when needed

    if ranks > 1:
        return select_cases(suite, arch, None, precision)
    # Single-rank: a case is its reference, whatever strategy the suite gives it.
    return list({c.key(): c for c in select_cases(suite, arch, "none", precision)}.values())


@app.command()
def versions(
    ctx: typer.Context,
    good: Annotated[str, typer.Option("--good", help="A release whose numbers are right.")],
    bad: Annotated[str, typer.Option("--bad", help="A release whose numbers are wrong.")],
    suite: Suite = None,
    arch: Arch = None,
    precision: Precision = None,
    inverse: Annotated[
        bool, typer.Option("--inverse", help="Find the release that fixed it (bad is older).")
    ] = False,
    baseline: Annotated[
        str,
        typer.Option(help="Hold references to the goldens, or to the good release's (good)."),
    ] = "goldens",
    goldens_dir: GoldensDir = None,
    impl_files: Annotated[
        list[str] | None,
        typer.Option("--impl", help="MODEL_TYPE=file.py: that model type from this file."),
    ] = None,
    ranks: Ranks = 1,
    timeout: Timeout = 60.0,
    db: Db = store.DEFAULT_DB,
) -> None:
    """Binary search over published mlx-lm releases, each architecture on its own cases.

    Each release runs in a cached environment (see 'harness env list'); a release that
    cannot run a case skips it, never counts it bad. With --ranks N each release also
    runs the cases sharded (their suite's strategies) on N ranks under its Python: a
    case that fails there is bad. A reference that crashes, or hangs past --timeout,
    is bad too (the step stores its rank's Python stack). Prints, per architecture, the
    first bad release, its cases' ladder of metrics against the last good one and the
    first layer where they diverge. Exit 1 when a change was found.

    Example: harness bisect versions --bad 0.30.0 --good 0.32.2 --inverse --suite moe
    """
    cases = _cases(suite, arch, precision, ranks)
    overrides = impl.parse(impl_files)
    database = store.open_db(db)
    out = render.console()
    command = command_line(ctx, "bisect")
    label = suite or ",".join(arch or [])

    def record(step: Step) -> None:
        env = step.refs.implementation.env
        for note in env.notes if env else []:
            print(f"warning: {note}", file=sys.stderr)
        name = f"{label} @ mlx-lm {step.release}"
        run_id = judge.store_step(database, name, step.refs.versions, step.verdicts, command, ranks)
        counts = {v: sum(1 for x in step.verdicts if x.verdict == v) for v in StepVerdict}
        cache = "cached env" if step.env_reused else "new env"
        _say(
            out,
            f"mlx-lm {step.release:<8} {counts[StepVerdict.GOOD]:>3} good "
            f"{counts[StepVerdict.BAD]:>3} bad  "
            f"({cache}, {step.seconds:.1f} s, run {run_id})",
        )

    result = bisect_versions(
        cases,
        good,
        bad,
        inverse,
        baseline,
        paths.goldens(goldens_dir).directory,
        overrides,
        sharded=sharded.runner(ranks, timeout=timeout) if ranks > 1 else None,
        on_step=record,
        timeout=timeout,
    )
    for finding in result.findings:
        _say(out, f"{finding.arch}: {finding.outcome}: {finding.detail}")
        if finding.bisection is not None:
            b = finding.bisection
            if b.skipped:
                skipped = ", ".join(b.skipped)
                _say(out, f"  could also be in the skipped releases {skipped}")
            for case, comparison in finding.changed:
                _say(out, f"  {case.label()}: {b.last_old} -> {b.first_new}: {_ladder(comparison)}")
            shown = {case.label() for case, _ in finding.changed}
            flipped = _flipped(
                result.steps[b.last_old], result.steps[b.first_new], finding.arch, shown
            )
            for line in flipped:
                _say(out, f"  {line}")
    _say(
        out,
        f"{len(result.steps)} release(s) run of {len(result.releases)} in range, "
        f"{result.seconds:.1f} s",
    )
    raise typer.Exit(1 if any(f.outcome == "found" for f in result.findings) else 0)


def _flipped(before: Step, after: Step, arch: str, shown: set[str]) -> list[str]:
    """Cases whose verdict changed between the two releases without a ladder to show (a
    crash, a checkpoint that stopped loading), with the reason, cut to one short line."""
    old = {v.case.label(): v for v in before.verdicts if v.case.arch == arch}
    lines = []
    for v in after.verdicts:
        was = old.get(v.case.label())
        if v.case.arch != arch or was is None or StepVerdict.BAD not in (was.verdict, v.verdict):
            continue
        if v.case.label() not in shown:
            # The first line: a hang's Python stack is in the stored step.
            why = (v.detail or was.detail or "").split("\n", 1)[0]
            why = why if len(why) <= 160 else why[:157] + "..."
            lines.append(f"{v.case.label()}: {was.verdict} -> {v.verdict}: {why}".rstrip(": "))
    return lines


def _ladder(c: Comparison) -> str:
    m = c.metrics
    layer = (
        diagnose.first_divergent_layer(c.first_divergent_layer, c.first_divergent_part)
        if c.first_divergent_layer is not None
        else "no layer diverges"
    )
    tokens = (
        "tokens match" if m.tokens_match else f"tokens differ from step {m.first_token_divergence}"
    )
    return (
        f"max|Δ| {m.max_abs:.2e} rel {m.rel:.2e} cosine {m.cosine:.6f} KL {m.kl_max:.2e} "
        f"top1 {m.top1:.2f}, {tokens}; {layer}"
    )


def _store_commit(record: dict, step: commits.CommitStep) -> int:
    """A commit's step as a run; its mlx-lm version names the commit (a source tree has
    the version of its last release)."""
    versions = step.refs.versions
    versions = {**versions, "mlx-lm": f"{versions.get('mlx-lm')}+g{step.sha[:12]}"}
    name = f"{record['label']} @ {step.sha[:12]}"
    database = store.open_db(record["db"])
    return judge.store_step(database, name, versions, step.verdicts, record["command"], 1)


@app.command(name="commits")
def commits_command(
    ctx: typer.Context,
    repo: Annotated[Path, typer.Option("--repo", help="A local mlx-lm git checkout.")],
    good: Annotated[str, typer.Option("--good", help="A commit whose numbers are right.")],
    bad: Annotated[str, typer.Option("--bad", help="A commit whose numbers are wrong.")],
    suite: Suite = None,
    arch: Arch = None,
    precision: Precision = None,
    inverse: Annotated[
        bool, typer.Option("--inverse", help="Find the commit that fixed it (bad is older).")
    ] = False,
    timeout: Timeout = 60.0,
    db: Db = store.DEFAULT_DB,
) -> None:
    """Drive 'git bisect run' over commits of a local mlx-lm checkout.

    The bisect runs in a temporary worktree, so the checkout is left as it was; a dirty
    checkout is refused. A commit that cannot run the cases is skipped; one whose
    reference crashes, or hangs past --timeout, is bad. Each commit judged is stored as
    a run (kind bisect). Prints the first bad commit (the fix with
    --inverse), its size, and each case's ladder of metrics and first divergent layer
    against its parent. Exit 1 once the change is found (or the skipped commits it hides
    among).

    Example: harness bisect commits --repo ~/src/mlx-lm --good v0.31.3 --bad main --arch qwen3_moe
    """
    cases = _cases(suite, arch, precision)
    out = render.console()
    label = suite or ",".join(arch or [])
    record = {"db": str(db), "label": label, "command": command_line(ctx, "bisect")}
    stored = []

    def endpoint(plan: commits.Plan, step: commits.CommitStep) -> None:
        stored.append(_store_commit(plan.record, step))

    with tempfile.TemporaryDirectory(prefix="harness-bisect-") as work:
        started = time.perf_counter()
        result = commits.bisect_commits(
            repo, good, bad, cases, Path(work), inverse, record, on_step=endpoint, timeout=timeout
        )
    stored += result.runs
    for sha, verdict in result.steps:
        _say(out, f"  {sha[:12]} {verdict}")
    what = "fixed" if inverse else "bad"
    if result.first_new:
        _say(out, f"first {what} commit: {result.first_new} {result.subject}")
    else:
        _say(
            out,
            f"skipped commits hide the first {what} one; it is one of: "
            + ", ".join(sha[:12] for sha in result.candidates),
        )
    if result.change is not None:
        for line in _change(result.first_new, result.change):
            _say(out, f"  {line}")
    runs = f"runs {min(stored)}-{max(stored)}" if len(stored) > 1 else f"run {stored[0]}"
    _say(
        out,
        f"{len(result.steps)} step(s), {time.perf_counter() - started:.1f} s; "
        f"stored as {runs} (kind bisect) in {db}",
    )
    raise typer.Exit(1)


def _change(sha: str, change: commits.Change) -> list[str]:
    """What the first bad commit changed: its size, then each case against its parent."""
    files = f"{change.files} file{'s' if change.files != 1 else ''}"
    lines = [f"{files} changed, +{change.added} -{change.deleted} lines (against its parent)"]
    for case, comparison in change.changed:
        lines.append(f"{case.label()}: {change.parent[:12]} -> {sha[:12]}: {_ladder(comparison)}")
    lines += change.flipped
    if not change.changed and not change.flipped:
        lines.append(f"no case's references differ from those of its parent {change.parent[:12]}")
    return lines


@app.command()
def step(
    checkout: Annotated[Path, typer.Argument(help="The mlx-lm source tree to judge.")],
    baseline: Annotated[
        Path, typer.Option("--baseline", help="Folder of the good commit's saved references.")
    ],
) -> None:
    """Judge one mlx-lm source tree for 'git bisect run': exit 0 good, 1 bad, 125 skip.

    What 'harness bisect commits' runs at each commit (with --inverse, 0 is bad and 1
    good); it stores the step as a run when the bisect asked for it. A failure of the
    harness itself exits 128, which stops the bisect.

    Example: harness bisect step --baseline /tmp/harness-bisect-x/baseline ~/src/mlx-lm
    """
    try:
        plan, result = commits.step(checkout, baseline)
        run_id = _store_commit(plan.record, result) if plan.record else None
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(commits.EXIT_ABORT) from None
    for v in result.verdicts:
        print(f"{v.case.label()}: {v.verdict} {v.detail or ''}".rstrip())
    if run_id is not None:
        print(f"{commits.STORED} {run_id}")
    raise typer.Exit(commits.exit_code(result.verdict, plan.inverse))


def diff_impl(
    model_type: Annotated[str, typer.Argument(help="The model type both implement.")],
    a: Annotated[str, typer.Argument(help="A release, a commit (with --repo), a tree or a .py.")],
    b: Annotated[str, typer.Argument(help="The implementation to hold against A.")],
    repo: Annotated[
        Path | None, typer.Option("--repo", help="mlx-lm checkout the commits are of.")
    ] = None,
    ranks: Ranks = 1,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy", help="With --ranks: tp or pp (repeatable; default both where present)."
        ),
    ] = None,
    timeout: Timeout = 60.0,
) -> None:
    """Compare two implementations of a model type on the same tiny weights and prompts.

    Prints the ladder of metrics of B against A and the first layer where they diverge.
    With --ranks N both also run sharded (their own shard() / pipeline()) on N ranks:
    each against its own single-rank run, and B's sharded run against A's, so a change
    in a model file's sharding shows too. A side whose model crashes, or hangs past
    --timeout (its Python stack is shown), differs. Exit 1 when they differ.

    Example: harness diff-impl qwen3_moe 0.32.2 my_fork/qwen3_moe.py --ranks 2
    """
    # Imported here: the zoo loads mlx, which the other commands of the CLI never need.
    from harness.bisect.diff import STRATEGIES
    from harness.bisect.diff import diff_impl as compute_diff

    if ranks < 1:
        raise HarnessError("--ranks must be at least 1")
    if strategy and ranks == 1:
        raise HarnessError("--strategy needs --ranks N (N > 1): one rank runs nothing sharded")
    strategies = tuple(strategy) if strategy else STRATEGIES
    diffs = compute_diff(model_type, a, b, repo, ranks, strategies, timeout)
    out = render.console()
    differ = False
    for d in diffs.unsharded:
        if d.comparison is None:
            differ |= d.failed
            _say(out, f"{d.case.arch}: not compared: {d.detail}")
            continue
        same = d.comparison.passed
        differ |= not same
        verdict = "same within tolerance" if same else "differ"
        _say(out, f"{d.case.arch}: {d.b} vs {d.a}: {verdict}")
        _say(out, f"  {_ladder(d.comparison)}")
    for d in diffs.sharded:
        where = f"{d.case.arch} {d.case.strategy} on {diffs.ranks} ranks"
        runs = [r for r in d.runs if r is not None]
        if len(runs) == 2 and all(r.status == CaseStatus.SKIP for r in runs):
            _say(out, f"{where}: not run: {runs[0].reason}")
            continue
        differ |= d.differ
        verdict = "differ when sharded" if d.differ else "same within tolerance when sharded"
        _say(out, f"{where}: {d.b} vs {d.a}: {verdict}")
        for label, run in zip((d.a, d.b), d.runs, strict=True):
            _say(out, f"  {label}: {_own(run)}")
        if d.between is not None:
            _say(out, f"  sharded {d.b} vs sharded {d.a}: {_ladder(d.between)}")
        else:
            _say(out, f"  sharded runs not compared: {d.detail}")
    raise typer.Exit(1 if differ else 0)


def _own(run: CaseResult | None) -> str:
    """A sharded run against its own implementation's single-rank run, in a line."""
    if run is None:
        return "not run sharded: its single-rank run failed"
    if run.status == CaseStatus.SKIP:
        return f"not run sharded: {run.reason}"
    reason = f": {run.reason}" if run.reason else ""
    return f"{run.status} against its own single-rank run{reason}"


@env_app.command(name="list")
def env_list() -> None:
    """List the cached environments: what each holds, its size, when it was last used.

    Example: harness env list
    """
    out = render.console()
    found = envs.cached()
    _say(out, f"environments in {envs.cache_dir()}: {len(found)}")
    for env in found:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(env.used))
        size = envs.size_bytes(env.path) / 2**20
        _say(
            out,
            f"  {env.key}  mlx-lm {env.versions.get('mlx-lm')}  mlx {env.versions.get('mlx')}  "
            f"{size:.0f} MiB  used {used}  ({env.installer})",
        )


@env_app.command(name="prune")
def env_prune(
    older_than: Annotated[
        float | None,
        typer.Option("--older-than", help="Only those unused for this many days."),
    ] = None,
) -> None:
    """Remove cached environments (all, or those unused for --older-than days).

    Example: harness env prune --older-than 30
    """
    removed = envs.prune(older_than)
    out = render.console()
    for env in removed:
        _say(out, f"removed {env.key} (mlx-lm {env.versions.get('mlx-lm')})")
    _say(out, f"{len(removed)} environment(s) removed from {envs.cache_dir()}")
