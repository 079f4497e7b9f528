"""The history charts: well-formed SVG, one line per series, y from zero, failing runs
marked in a colour no series uses, dates and versions on the axis."""

import xml.etree.ElementTree as ET

from harness.service.plot import COLOURS, FAILING_COLOUR, Point, RunInfo, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def runs(*ids, versions=lambda i: "mlx 0.32.4, mlx-lm 0.32.2"):
    return {
        i: RunInfo(
            f"12-0{i} 03:00", f"run {i}, 2026-12-0{i}, {versions(i)}, harness abc", versions(i)
        )
        for i in ids
    }


def test_one_polyline_per_series_and_a_point_per_value():
    points = [Point(1, 400.0), Point(2, 380.0), Point(5, None, "crash")]
    svg = ET.fromstring(line_chart("decode tok/s", {"tp, 2 rank(s)": points}, runs(1, 2, 5)))
    (line,) = svg.iter(f"{SVG}polyline")
    assert line.get("data-series") == "tp, 2 rank(s)"
    assert len(line.get("points").split()) == 2  # the run without timings is left out
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert "12-01 03:00" in labels and "12-05 03:00" in labels  # dates, not run ids
    assert "0" in labels and "500" in labels  # y from 0 to 500


def test_failing_and_crashed_runs_are_marked_in_a_colour_no_series_uses():
    series = {
        name: [Point(1, 1000.0), Point(2, 500.0, "fail"), Point(3, None, "timeout")]
        for name in ("tp, 2 rank(s)", "pp, 2 rank(s)", "tp, 4 rank(s)")
    }
    svg = ET.fromstring(line_chart("prefill tok/s", series, runs(1, 2, 3)))
    assert FAILING_COLOUR not in COLOURS
    assert {line.get("stroke") for line in svg.iter(f"{SVG}polyline")} <= set(COLOURS)
    marks = [p for p in svg.iter(f"{SVG}path") if p.get("class") == "failing-mark"]
    assert len(marks) == 6 and {m.get("stroke") for m in marks} == {FAILING_COLOUR}
    assert {m.get("data-status") for m in marks} == {"fail", "timeout"}
    titles = [m.find(f"{SVG}title").text for m in marks]
    assert any(t.endswith("500 tok/s, fail") for t in titles)
    assert any(t.endswith(": timeout") for t in titles)  # no value: a mark on the axis


def test_hover_says_versions_and_a_version_change_is_drawn():
    versions = lambda i: "mlx 0.32.4, mlx-lm " + ("0.32.2" if i < 3 else "0.33.0")  # noqa: E731
    svg = ET.fromstring(
        line_chart(
            "decode", {"a": [Point(i, 100.0) for i in (1, 2, 3)]}, runs(1, 2, 3, versions=versions)
        )
    )
    columns = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "run-column"]
    assert "mlx-lm 0.32.2, harness abc" in columns[0].find(f"{SVG}title").text
    (change,) = [line for line in svg.iter(f"{SVG}line") if line.get("class") == "version-change"]
    assert "0.32.2 → mlx 0.32.4, mlx-lm 0.33.0" in change.find(f"{SVG}title").text


def test_no_values_says_so():
    svg = ET.fromstring(line_chart("prefill tok/s", {}, {}))
    assert "no tok/s recorded" in [t.text for t in svg.iter(f"{SVG}text")]
