"""A line chart of tok/s over runs as inline SVG: drawn on the server, so the page needs no
JavaScript and no network, and any browser (or a test reading the HTML) sees the same.

A failing run is what a reader looks for first, so its mark has a colour of its own that no
series uses (red, kept out of the palette); a crashed or timed-out run measured nothing, so
its mark sits on the x axis. Every point and every run's column say the run's date, mlx and
mlx-lm versions and harness commit on hover; a version change is drawn as a dashed line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 860, 250
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 30, 44
# Series colours: no red and nothing close to it (orange, pink), so failure marks stand out.
COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22")
FAILING_COLOUR = "#cf222e"  # the pages' failing red (.st-fail)
MAX_X_LABELS = 8


@dataclass(frozen=True)
class Point:
    run_id: int
    value: float | None  # None: the run measured nothing (a crash, a timeout, no timings)
    failing: str | None = None  # the failing status ("fail", "crash", ...), None when not


@dataclass(frozen=True)
class RunInfo:
    """What the x axis says about a run."""

    date: str  # short label under the axis
    hover: str  # the run's id, start, versions and commit
    versions: str  # "mlx X, mlx-lm Y": a change draws a dashed line


Series = dict[str, list[Point]]  # name -> points in run order


def _nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def line_chart(title: str, series: Series, runs: dict[int, RunInfo], unit: str = "tok/s") -> str:
    """One panel: x is the run (oldest left), y starts at zero so a drop reads as the
    fraction it is; one line and legend entry per series; `runs` has every run id used."""
    order = sorted({p.run_id for points in series.values() for p in points})
    values = [p.value for points in series.values() for p in points if p.value is not None]
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    base_y = TOP + inner_h
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="harness-chart" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not order:
        out.append(f'<text x="{LEFT}" y="{TOP + inner_h / 2}">no {unit} recorded</text></svg>')
        return "".join(out)
    top = _nice_top(max(values, default=1.0))
    slot = inner_w / len(order)
    # Centred slots: a single run still sits mid-panel.
    x_of = {run: LEFT + slot * (i + 0.5) for i, run in enumerate(order)}

    def y_of(v: float) -> float:
        return TOP + inner_h * (1 - v / top)

    for i in range(5):
        y = y_of(top * i / 4)
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#ddd"/><text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_label(top * i / 4)}</text>"
        )
    out += _x_axis(order, x_of, slot, runs, base_y)
    out.append(
        f'<text x="14" y="{TOP + inner_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + inner_h / 2})">{escape(unit)}</text>'
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{base_y}" stroke="#888"/>'
        f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{base_y}" y2="{base_y}" stroke="#888"/>'
    )
    failing_seen = False
    for n, (name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[n % len(COLOURS)]
        drawn = [p for p in points if p.value is not None]
        path = " ".join(f"{x_of[p.run_id]:.1f},{y_of(p.value):.1f}" for p in drawn)
        out.append(
            f'<polyline class="series" data-series="{escape(name)}" fill="none" '
            f'stroke="{colour}" stroke-width="1.5" points="{path}"/>'
        )
        for p in points:
            hover = f"{runs[p.run_id].hover}; {escape(name)}: "
            x = x_of[p.run_id]
            if p.failing:
                failing_seen = True
                said = f"{_label(p.value)} {escape(unit)}, " if p.value is not None else ""
                y = y_of(p.value) if p.value is not None else base_y
                out.append(
                    f'<path class="failing-mark" data-status="{escape(p.failing)}" '
                    f'd="M{x - 5:.1f},{y - 5:.1f}L{x + 5:.1f},{y + 5:.1f}M{x - 5:.1f},'
                    f'{y + 5:.1f}L{x + 5:.1f},{y - 5:.1f}" stroke="{FAILING_COLOUR}" '
                    f'stroke-width="2.5"><title>{hover}{said}{escape(p.failing)}</title></path>'
                )
            elif p.value is not None:
                out.append(
                    f'<circle cx="{x:.1f}" cy="{y_of(p.value):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{hover}{_label(p.value)} {escape(unit)}</title></circle>"
                )
        y = TOP + 6 + 16 * n
        out.append(
            f'<rect x="{LEFT + inner_w + 12}" y="{y - 8}" width="10" height="10" '
            f'fill="{colour}"/><text x="{LEFT + inner_w + 26}" y="{y + 1}">{escape(name)}</text>'
        )
    if failing_seen:
        x, y = LEFT + inner_w + 17, TOP + 6 + 16 * len(series) - 3
        out.append(
            f'<path d="M{x - 5},{y - 5}L{x + 5},{y + 5}M{x - 5},{y + 5}L{x + 5},{y - 5}" '
            f'stroke="{FAILING_COLOUR}" stroke-width="2.5"/>'
            f'<text x="{LEFT + inner_w + 26}" y="{y + 4}">failing run (on the axis: '
            f'</text><text x="{LEFT + inner_w + 26}" y="{y + 17}">crash, timeout)</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _x_axis(order, x_of, slot, runs: dict[int, RunInfo], base_y: float) -> list[str]:
    """Dates under the axis (at most MAX_X_LABELS), a hover column per run, and a dashed
    line where the versions changed from the run before."""
    out = []
    step = max(1, math.ceil(len(order) / MAX_X_LABELS))
    previous = None
    for i, run in enumerate(order):
        info, x = runs[run], x_of[run]
        out.append(
            f'<rect class="run-column" x="{x - slot / 2:.1f}" y="{TOP}" width="{slot:.1f}" '
            f'height="{base_y - TOP:.1f}" fill="transparent"><title>{escape(info.hover)}'
            "</title></rect>"
        )
        if previous is not None and info.versions != previous:
            out.append(
                f'<line class="version-change" x1="{x - slot / 2:.1f}" x2="{x - slot / 2:.1f}" '
                f'y1="{TOP}" y2="{base_y}" stroke="#555" stroke-dasharray="3,3">'
                f"<title>{escape(previous)} → {escape(info.versions)}</title></line>"
            )
        previous = info.versions
        if i % step == 0 or i == len(order) - 1:
            out.append(
                f'<text x="{x:.1f}" y="{base_y + 15}" text-anchor="middle">'
                f"{escape(info.date)}</text>"
            )
    out.append(
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
        "run start (UTC); hover a column for its versions and commit</text>"
    )
    return out
