"""The history charts: well-formed SVG, one line per series, y from zero."""

import xml.etree.ElementTree as ET

from harness.service.plot import FAILING_COLOUR, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_one_polyline_per_series_and_a_point_per_value():
    points = [(1, 400.0, False), (2, 380.0, False), (5, None, True)]
    svg = ET.fromstring(line_chart("decode tok/s", {"tp, 2 rank(s)": points}))
    (line,) = svg.iter(f"{SVG}polyline")
    assert line.get("data-series") == "tp, 2 rank(s)"
    assert len(line.get("points").split()) == 2  # the run without timings is left out
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert {"1", "2", "5"} <= set(labels) and "0" in labels and "500" in labels  # 0 to 500


def test_lower_is_drawn_lower_and_failing_runs_stand_out():
    svg = ET.fromstring(line_chart("prefill tok/s", {"a": [(1, 1000.0, False), (2, 500.0, True)]}))
    first, second, legend = svg.iter(f"{SVG}circle")
    assert float(second.get("cy")) > float(first.get("cy"))  # SVG y grows downwards
    assert second.get("fill") == legend.get("fill") == FAILING_COLOUR != first.get("fill")
    assert "failing run" in [t.text for t in svg.iter(f"{SVG}text")]


def test_no_values_says_so():
    svg = ET.fromstring(line_chart("prefill tok/s", {}))
    assert "no tok/s recorded" in [t.text for t in svg.iter(f"{SVG}text")]
