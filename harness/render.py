"""Rich rendering for the CLI: verdict tables, progress lines, architecture listings."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.records import noise
from harness.records.result import CaseResult
from harness.records.table import (
    COLUMNS,
    STATUS_COLUMN,
    TIMINGS_CAPTION,
    cells,
    held_against,
    number,
)
from harness.status import (
    FAILING,
    BenchStatus,
    CaseStatus,
    GoldenStatus,
    SelftestVerdict,
)

STYLE = {
    CaseStatus.PASS: "green",
    CaseStatus.FAIL: "red",
    CaseStatus.CRASH: "red",
    CaseStatus.TIMEOUT: "red",
    CaseStatus.ERROR: "red",
    CaseStatus.SKIP: "yellow",
}


def progress_line(result: CaseResult, total: int) -> str:
    worst = result.worst
    detail = f"max|Δ| {number(worst.metrics.max_abs)}" if worst else ""
    if worst and result.reference and result.reference != "single-rank":
        detail += f" vs {result.reference.split(' (')[0]}"
    why = result.reason if result.status != CaseStatus.PASS else "; ".join(result.warnings)
    why = (why or "").splitlines()[0] if why else ""
    colour = STYLE[result.status]
    return (
        f"[{result.index + 1:>3}/{total}] [{colour}]{result.status:<7}[/{colour}] "
        f"{escape(result.case.label()):<45} {detail} {escape(why)}".rstrip()
    )


def verdict_table(rows: list[dict], title: str) -> Table:
    # The run's tok/s time bare model calls on the comparison shapes, not generation as
    # users quote it (that is `harness bench`): the caption says so.
    captions = [TIMINGS_CAPTION, held_against(rows)]
    table = Table(title=title, caption="\n".join(filter(None, captions)), show_lines=False)
    for name in COLUMNS:
        table.add_column(name, overflow="fold")
    for row in rows:
        text = [escape(cell) for cell in cells(row)]
        colour = STYLE.get(row["status"], "white")
        text[STATUS_COLUMN] = f"[{colour}]{text[STATUS_COLUMN]}[/{colour}]"
        table.add_row(*text)
    return table


def failure_details(rows: list[dict]) -> list[str]:
    """The full reason of every non-passing case (crash stderr tails included)."""
    out = []
    for row in rows:
        if row["status"] in FAILING and row["reason"]:
            out.append(
                f"case {row['idx'] + 1} {row['arch']}/{row['precision']}/{row['strategy']} "
                f"[{row['status']}]: {row['reason']}"
            )
    return out


def summary(counts: dict, seconds: float, db_path: str, run_id: int) -> str:
    return (
        f"{counts['cases']} cases: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped in {seconds:.1f}s; run {run_id} stored in {db_path}"
    )


def console() -> Console:
    out = Console(highlight=False)
    if not out.is_terminal:
        # Logs and CI: wide enough that the verdict table does not fold every cell.
        out = Console(highlight=False, width=max(out.width, 180))
    return out


def archs_table(archs: dict, support) -> Table:
    table = Table(title="architecture zoo (support under the installed mlx-lm)")
    for name in ("arch", "model_type", "kind", "tp", "pp", "features", "note"):
        table.add_column(name)
    for name, arch in archs.items():
        sup = support(name)
        mark = lambda ok: "[green]yes[/green]" if ok else "[dim]no[/dim]"  # noqa: E731
        table.add_row(
            name,
            arch.model_type,
            "moe" if arch.moe else "dense",
            mark(sup.tp) if sup.available else "-",
            mark(sup.pp) if sup.available else "-",
            ", ".join(arch.features),
            _arch_note(sup),
        )
    return table


def _arch_note(sup) -> str:
    if not sup.available:
        return f"[yellow]unsupported: {sup.reason}[/yellow]"
    if not (sup.tp or sup.pp):
        return "external strategies only (--strategy FILE:fn); tp / pp cases skip"
    return ""


def run_header(run: dict) -> str:
    return (
        f"run {run['id']} [{run['status']}] {run['command']}\n"
        f"  started {run['started']}  finished {run['finished']}  ranks {run['ranks']} "
        f"backend {run['backend']} hosts {run['hosts']}\n"
        f"  harness {run['harness_sha']}  mlx {run['mlx_version']}  "
        f"mlx-lm {run['mlx_lm_version']}  python {run['python']}  {run['platform']}"
    )


GOLDEN_STYLE = {
    GoldenStatus.MATCH: "green",
    GoldenStatus.WRITTEN: "green",
    GoldenStatus.EXISTS: "dim",
    GoldenStatus.UPDATED: "yellow",
    GoldenStatus.MISSING: "yellow",
    GoldenStatus.MISMATCH: "red",
    GoldenStatus.CORRUPT: "red",
    GoldenStatus.UNAVAILABLE: "dim",
}


def golden_table(actions) -> Table:
    table = Table(title="goldens")
    for name in ("key", "status", "max|Δ|", "recorded with", "detail"):
        table.add_column(name, overflow="fold")
    for a in actions:
        check = a.check
        m = check.comparison.metrics if check and check.comparison else None
        recorded = check.recorded if check else {}
        colour = GOLDEN_STYLE.get(a.status, "white")
        versions = f"mlx-lm {recorded['mlx_lm_version']}" if recorded.get("mlx_lm_version") else ""
        detail = (check.detail or "") if check else ""
        if (
            check
            and check.comparison
            and check.comparison.diagnoses
            and a.status != GoldenStatus.MATCH
        ):
            detail = "; ".join(check.comparison.diagnoses)
        table.add_row(
            a.key,
            f"[{colour}]{a.status}[/{colour}]",
            number(m.max_abs) if m else "-",
            versions,
            detail,
        )
    return table


def golden_diff(d) -> str:
    c = d.check.comparison
    m = c.metrics
    rec, obt = d.recorded, d.obtained
    tokens = "match" if m.tokens_match else f"differ from step {m.first_token_divergence}"
    lines = [
        f"golden {d.key} vs {d.against}: {d.check.status}",
        f"  recorded: mlx {rec.get('mlx_version')} mlx-lm {rec.get('mlx_lm_version')} "
        f"{rec.get('platform')} at {rec.get('created')}",
        f"  {d.against}: mlx {obt.get('mlx_version')} mlx-lm {obt.get('mlx_lm_version')} "
        f"{obt.get('platform')}",
        f"  max|Δ| {number(m.max_abs)}  rel {number(m.rel)}  cosine {number(m.cosine, '.6f')}  "
        f"KL {number(m.kl_max)}  top1 {number(m.top1, '.2f')}  "
        f"decode max|Δ| {number(m.decode_max_abs)}",
        f"  greedy tokens {tokens}",
    ]
    if c.diagnoses:
        lines.append("  diagnosis: " + "; ".join(c.diagnoses))
    return "\n".join(lines)


def comparison_table(result) -> Table:
    """`harness compare`: one row per change, regressions first."""
    a, b = result.run_a, result.run_b
    label_a, label_b = a["suite"] or a["kind"], b["suite"] or b["kind"]
    table = Table(title=f"run {a['id']} ({label_a}) -> run {b['id']} ({label_b})")
    for name in ("case", "change", "before", "after", "regressed"):
        table.add_column(name, overflow="fold")
    for change in sorted(result.changes, key=lambda c: (not c.regressed, c.label)):
        flag = "[red]yes[/red]" if change.regressed else "no"
        table.add_row(
            escape(change.label),
            change.what,
            escape(change.before or "-"),
            escape(change.after or "-"),
            flag,
        )
    return table


def comparison_summary(result) -> str:
    regressed = sum(c.regressed for c in result.changes)
    verdict = f"{regressed} regression(s)" if regressed else "no regression"
    if result.run_b["kind"] == "bench":
        rule = (
            f"below {noise.RATIO}x the baseline after the run's drift, more than "
            f"{noise.Z:g} sd below the other cases, no sample overlapping"
        )
    else:
        rule = (
            f"against its last {noise.MIN_BASELINE}-{noise.HISTORY} runs of the same setup "
            f"after each run's drift: every part under {noise.CLEAR}x their median, still so "
            f"at the run's second look; or a part below all of them and {noise.RATIO}x their "
            f"median in {noise.PERSIST} runs in a row"
        )
    return (
        f"{result.matched} cases in both runs, {len(result.changes)} change(s): {verdict} "
        f"(tok/s: {rule})"
    )


PULL_STYLE = {"new": "green", "replaced": "yellow", "same": "dim", "absent": "yellow"}


def pulled_table(pulled) -> Table:
    """`golden pull`: what happened to each golden the service listed."""
    table = Table(title="goldens pulled")
    for name in ("key", "action", "sha256"):
        table.add_column(name, overflow="fold")
    for p in pulled:
        colour = PULL_STYLE[p.action]
        table.add_row(p.key, f"[{colour}]{p.action}[/{colour}]", (p.sha256 or "-")[:16])
    return table


def pulled_summary(pulled, url: str, directory) -> str:
    counts = {action: sum(p.action == action for p in pulled) for action in PULL_STYLE}
    absent = f", {counts['absent']} not on the service" if counts["absent"] else ""
    return (
        f"{counts['new']} new, {counts['replaced']} replaced, {counts['same']} already "
        f"identical{absent}: from {url} into {directory}"
    )


VERDICT_STYLE = {
    SelftestVerdict.CAUGHT: "green",
    SelftestVerdict.PASSED: "green",
    SelftestVerdict.MISSED: "red",
    SelftestVerdict.WRONG: "red",
    SelftestVerdict.FALSE_ALARM: "red",
    SelftestVerdict.NOT_RUN: "yellow",
}


def selftest_line(v) -> str:
    """One selftest verdict as it arrives: fault, architecture, verdict, and what was said."""
    colour = VERDICT_STYLE.get(v.verdict, "white")
    what = escape("; ".join(v.diagnoses) or v.detail)
    case = f"{v.arch}/{v.precision}"
    return f"[{colour}]{v.verdict:<15}[/{colour}] {v.fault:<28} {case:<20} {what}".rstrip()


def _layer_text(layer, part) -> str:
    return "-" if layer is None else f"{layer} ({part})"


def selftest_table(verdicts: list, title: str) -> Table:
    table = Table(title=title)
    for name in (
        "fault",
        "arch",
        "prec",
        "verdict",
        "status (expected)",
        "diagnosis given",
        "diagnosis expected",
        "layer named",
        "layer injected",
    ):
        table.add_column(name, overflow="fold")
    for v in verdicts:
        colour = VERDICT_STYLE.get(v.verdict, "white")
        given = "; ".join(v.diagnoses) or (v.detail if v.status != CaseStatus.PASS else "")
        table.add_row(
            v.fault,
            v.arch,
            v.precision,
            f"[{colour}]{v.verdict}[/{colour}]",
            f"{v.status} ({v.expected_status})",
            escape(given),
            escape("; ".join(v.expected_diagnoses) or "-"),
            _layer_text(v.layer, v.part),
            _layer_text(v.expected_layer, v.expected_part),
        )
    return table


def _percent(rate) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


def selftest_summary(report, db_path: str | None) -> str:
    faults, controls = report.faults, report.controls
    caught = sum(v.verdict == SelftestVerdict.CAUGHT for v in faults)
    alarms = sum(v.verdict == SelftestVerdict.FALSE_ALARM for v in controls)
    where = f"; run {report.run_id} stored in {db_path}" if report.run_id is not None else ""
    return (
        f"detection rate {_percent(report.detection_rate)} ({caught}/{len(faults)} faults caught "
        f"with the expected diagnosis), false-alarm rate {_percent(report.false_alarm_rate)} "
        f"({alarms}/{len(controls)} controls) on {report.ranks} ranks "
        f"in {report.seconds:.1f}s{where}"
    )


def props_table(report) -> Table:
    """One row per property of a `harness.props.PropsReport`: verdict, examples, time, why."""
    where = "simulated ranks" if report.simulated else f"{report.ranks} ranks"
    table = Table(title=f"shard/unshard properties on {where}")
    for name in ("property", "passed", "examples", "seconds", "detail"):
        table.add_column(name, overflow="fold")
    for r in report.results:
        passed = "[green]yes[/green]" if r.passed else "[red]no[/red]"
        table.add_row(r.name, passed, str(r.examples), f"{r.seconds:.1f}", escape(r.detail or ""))
    return table


def props_summary(report) -> str:
    """One line: how many properties held, over how many examples, where and how long."""
    passed = sum(r.passed for r in report.results)
    examples = sum(r.examples for r in report.results)
    where = "simulated ranks (1 to 8 per example)" if report.simulated else f"{report.ranks} ranks"
    return (
        f"{len(report.results)} properties: {passed} passed, {len(report.results) - passed} "
        f"failed, {examples} examples on {where} in {report.seconds:.1f}s"
    )


BENCH_STYLE = {BenchStatus.OK: "green", **STYLE}


def bench_line(line) -> str:
    """A finished bench case: its medians, or why it has none."""
    colour = BENCH_STYLE[line.status]
    head = f"[{colour}]{line.status:<7}[/{colour}] {escape(line.label)} {escape(line.strategy)}"
    if not line.stats:
        return f"{head} {escape((line.reason or '').splitlines()[0] if line.reason else '')}"
    prompt, generation = line.stats["prompt_tps"], line.stats["generation_tps"]
    return f"{head}: prompt {prompt.median:,.1f} tok/s, generation {generation.median:,.1f} tok/s"


def _spread(spread) -> str:
    return f"{spread.median:,.1f} ({spread.low:,.1f}-{spread.high:,.1f})"


def _versus(line, metric: str) -> str:
    if line.baseline is None:
        return "baseline" if line.stats else "-"
    ratio = line.ratios[metric]
    return f"{ratio:.2f}x" + (" (noise)" if line.noise[metric] else "")


def bench_table(lines: list, title: str) -> Table:
    """Strategies side by side: rank 0's median (min-max over trials) as mlx_lm.benchmark
    computes it, ratios to the first strategy of the same model and shapes."""
    table = Table(
        title=title,
        show_lines=False,
        caption="vs first: median / the first strategy's median of the same model and shapes; "
        "(noise): within noise, the trial ranges overlap",
    )
    for name in (
        "#",
        "model and shapes",
        "strategy",
        "ranks",
        "status",
        "prompt tok/s",
        "vs first",
        "generation tok/s",
        "vs first",
        "prompt time ms",
        "peak GB per rank",
    ):
        table.add_column(name, overflow="fold")
    for line in lines:
        colour = BENCH_STYLE.get(line.status, "white")
        if line.stats:
            ttft = line.stats["ttft_s"]
            cells = (
                _spread(line.stats["prompt_tps"]),
                _versus(line, "prompt_tps"),
                _spread(line.stats["generation_tps"]),
                _versus(line, "generation_tps"),
                f"{ttft.median * 1e3:,.1f}",
                " / ".join(f"{gb:.3f}" for _, gb in sorted(line.peak_memory_gb.items())),
            )
        else:
            cells = (escape((line.reason or "-").splitlines()[0]), "", "", "", "", "")
        table.add_row(
            str(line.index + 1),
            escape(line.label),
            escape(line.strategy),
            str(line.ranks),
            f"[{colour}]{line.status}[/{colour}]",
            *cells,
        )
    return table
