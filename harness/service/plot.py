"""A line chart of tok/s over runs as inline SVG: drawn on the server, so the page needs no
JavaScript and no network, and any browser (or a test reading the HTML) sees the same."""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 760, 230
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 30, 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")

FAILING_COLOUR = "#d62728"
# name -> (run id, value, whether that run failed) in run order
Series = dict[str, list[tuple[int, float | None, bool]]]


def _nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def line_chart(title: str, series: Series, unit: str = "tok/s") -> str:
    """One panel: x is the run (in order, labelled by run id), y starts at zero so a drop
    reads as the fraction it is; one line and legend entry per series."""
    runs = sorted({point[0] for points in series.values() for point in points})
    values = [point[1] for points in series.values() for point in points if point[1] is not None]
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="harness-chart" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not values:
        out.append(f'<text x="{LEFT}" y="{TOP + inner_h / 2}">no {unit} recorded</text></svg>')
        return "".join(out)
    top = _nice_top(max(values))
    # Centred slots: a single run still sits mid-panel.
    x_of = {run: LEFT + inner_w * (i + 0.5) / len(runs) for i, run in enumerate(runs)}

    def y_of(v: float) -> float:
        return TOP + inner_h * (1 - v / top)

    for i in range(5):
        v = top * i / 4
        y = y_of(v)
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#ddd"/><text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_label(v)}</text>"
        )
    step = max(1, math.ceil(len(runs) / 12))  # at most ~12 x labels
    for i, run in enumerate(runs):
        if i % step == 0 or i == len(runs) - 1:
            out.append(
                f'<text x="{x_of[run]:.1f}" y="{TOP + inner_h + 16}" '
                f'text-anchor="middle">{run}</text>'
            )
    out.append(
        f'<text x="{LEFT + inner_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">run</text>'
        f'<text x="14" y="{TOP + inner_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + inner_h / 2})">{escape(unit)}</text>'
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + inner_h}" stroke="#888"/>'
        f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{TOP + inner_h}" '
        f'y2="{TOP + inner_h}" stroke="#888"/>'
    )
    for n, (name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[n % len(COLOURS)]
        drawn = [(run, v, failed) for run, v, failed in points if v is not None]
        path = " ".join(f"{x_of[run]:.1f},{y_of(v):.1f}" for run, v, _ in drawn)
        out.append(
            f'<polyline class="series" data-series="{escape(name)}" fill="none" '
            f'stroke="{colour}" stroke-width="2" points="{path}"/>'
        )
        for run, v, failed in drawn:
            # A failing run stands out on the line: when did it start failing, and did the
            # speed move with it?
            fill, radius, note = (FAILING_COLOUR, 5, ", failing") if failed else (colour, 3, "")
            out.append(
                f'<circle cx="{x_of[run]:.1f}" cy="{y_of(v):.1f}" r="{radius}" fill="{fill}" '
                f'stroke="{colour}"><title>run {run}, {escape(name)}: {_label(v)} '
                f"{escape(unit)}{note}</title></circle>"
            )
        y = TOP + 6 + 16 * n
        out.append(
            f'<rect x="{LEFT + inner_w + 12}" y="{y - 8}" width="10" height="10" '
            f'fill="{colour}"/><text x="{LEFT + inner_w + 26}" y="{y + 1}">{escape(name)}</text>'
        )
    if any(failed for points in series.values() for _, _, failed in points):
        y = TOP + 6 + 16 * len(series)
        out.append(
            f'<circle cx="{LEFT + inner_w + 17}" cy="{y - 3}" r="5" fill="{FAILING_COLOUR}"/>'
            f'<text x="{LEFT + inner_w + 26}" y="{y + 1}">failing run</text>'
        )
    out.append("</svg>")
    return "".join(out)
