"""The verdict table as text: its columns and each row's cells, shared by the terminal
table (`render`) and the GitHub-flavoured markdown that CI posts (`markdown`)."""

from __future__ import annotations

import json
import math

from harness.status import FAILING, CaseStatus

COLUMNS = (
    "#",
    "arch",
    "variant",
    "prec",
    "strategy",
    "ranks",
    "status",
    "max|Δ|",
    "KL",
    "top1",
    "tokens",
    "model-call prefill tok/s",
    "model-call decode tok/s",
    "diagnosis",
)
TIMINGS_CAPTION = (
    "tok/s: model-call throughput on the comparison shapes, sharded / reference "
    "(generation tok/s as mlx_lm.benchmark reports it: harness bench)"
)
STATUS_COLUMN = COLUMNS.index("status")


def number(value, fmt: str = ".1e") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def rate(sharded, reference) -> str:
    """Sharded tok/s, then the single-rank reference's."""
    if sharded is None:
        return "-"
    return f"{sharded:,.0f}" + (f" / {reference:,.0f}" if reference else "")


def note(row: dict) -> str:
    """A passing case's warnings, or what went wrong: its diagnoses, else its reason's
    first line (the rest of a crash's reason is the ranks' stderr)."""
    if row["status"] == CaseStatus.PASS:
        return "; ".join(json.loads(row.get("warnings") or "[]"))
    diagnoses = json.loads(row["diagnoses"] or "[]")
    return "; ".join(diagnoses) or (row["reason"] or "").split("\n", 1)[0]


def cells(row: dict) -> list[str]:
    """One case row as the text of each column."""
    return [
        str(row["idx"] + 1),
        row["arch"],
        row["variant"],
        row["precision"],
        row["strategy"],
        str(row["ranks"]),
        row["status"],
        number(row["max_abs"]),
        number(row["kl_max"]),
        number(row["top1"], ".2f"),
        {1: "match", 0: "differ"}.get(row["tokens_match"], "-"),
        rate(row["prefill_tok_s"], row["ref_prefill_tok_s"]),
        rate(row["decode_tok_s"], row["ref_decode_tok_s"]),
        note(row),
    ]


def held_against(rows: list[dict]) -> str | None:
    """What the cases were compared with (single-rank, golden, another strategy)."""
    held = sorted({row["reference"] for row in rows if row.get("reference")})
    return "held against: " + "; ".join(held) if held else None


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(run: dict, cases: list[dict]) -> str:
    """A run as GitHub-flavoured markdown: a heading with its verdict and environment, the
    verdict table, and each failing case's full reason in a collapsed block."""
    counts = {s: sum(c["status"] == s for c in cases) for s in (CaseStatus.PASS, CaseStatus.SKIP)}
    failing = [c for c in cases if c["status"] in FAILING]
    held = held_against(cases)
    lines = [
        f"### run {run['id']}: {run['suite']} on {run['ranks']} rank(s): {run['status']}",
        "",
        f"{len(cases)} cases: {counts[CaseStatus.PASS]} passed, {len(failing)} failed, "
        f"{counts[CaseStatus.SKIP]} skipped. harness `{(run['harness_sha'] or '?')[:10]}`, "
        f"mlx {run['mlx_version']}, mlx-lm {run['mlx_lm_version']}, {run['platform']}, "
        f"backend {run['backend']}" + (f"; {held}." if held else "."),
        "",
        "| " + " | ".join(_md(c) for c in COLUMNS) + " |",
        "|" + "|".join("---:" if c in ("#", "ranks") else "---" for c in COLUMNS) + "|",
    ]
    for row in cases:
        text = cells(row)
        if row["status"] in FAILING:
            text[STATUS_COLUMN] = f"**{text[STATUS_COLUMN]}**"
        lines.append("| " + " | ".join(_md(cell) for cell in text) + " |")
    for row in failing:
        if row["reason"]:
            lines += [
                "",
                f"<details><summary>case {row['idx'] + 1} {_md(row['label'])} "
                f"[{row['status']}]</summary>",
                "",
                "```",
                row["reason"].replace("```", "'''"),
                "```",
                "</details>",
            ]
    return "\n".join(lines) + "\n"
