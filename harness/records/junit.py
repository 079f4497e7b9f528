"""A stored run as JUnit XML, one testcase per case, in the element and attribute names
pytest's `--junitxml` writes (so every CI that reads pytest's reports reads these).

A failing case is a `failure` whose message is its diagnosis (a harness or setup `error`
status is an `error`), a skip is `skipped` with its reason, and the ranks' stderr tails
that a crash or timeout carries below its first line go to `system-err`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.errors import HarnessError
from harness.records.table import note
from harness.status import FAILING, CaseStatus

# Characters XML 1.0 cannot carry (stderr tails hold ANSI escapes and worse).
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
PROPERTIES = ("harness_sha", "mlx_version", "mlx_lm_version", "python", "platform", "backend")


def _text(value) -> str:
    return _ILLEGAL.sub(lambda m: f"#x{ord(m.group()):02X}", str(value))


def _testcase(run: dict, row: dict) -> ET.Element:
    case = ET.Element(
        "testcase",
        classname=_text(f"{run['suite']}.ranks{row['ranks']}"),
        name=_text(row["label"]),
        time=f"{row['duration_s'] or 0.0:.3f}",
    )
    first, _, tails = (row["reason"] or "").partition("\n")
    if row["status"] == CaseStatus.SKIP:
        ET.SubElement(case, "skipped", type="skip", message=_text(first)).text = _text(first)
    elif row["status"] in FAILING:
        tag = "error" if row["status"] == CaseStatus.ERROR else "failure"
        message = f"{row['status']}: {note(row)}"
        failure = ET.SubElement(case, tag, message=_text(message))
        failure.text = _text(first)
        if tails.strip():
            ET.SubElement(case, "system-err").text = _text(tails.strip())
    return case


def junit_xml(run: dict, cases: list[dict]) -> str:
    """The run row and case rows of `store.get_run` as a JUnit XML document."""
    statuses = [row["status"] for row in cases]
    suite = ET.Element(
        "testsuite",
        name=_text(f"harness {run['kind']} {run['suite']} on {run['ranks']} rank(s)"),
        errors=str(statuses.count(CaseStatus.ERROR)),
        failures=str(sum(s in FAILING and s != CaseStatus.ERROR for s in statuses)),
        skipped=str(statuses.count(CaseStatus.SKIP)),
        tests=str(len(cases)),
        time=f"{sum(row['duration_s'] or 0.0 for row in cases):.3f}",
        timestamp=_text(run["started"]),
        hostname=_text(run["hosts"]),
    )
    properties = ET.SubElement(suite, "properties")
    for name in PROPERTIES:
        ET.SubElement(properties, "property", name=name, value=_text(run.get(name) or ""))
    suite.extend(_testcase(run, row) for row in cases)
    root = ET.Element("testsuites", name="harness")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write(path: Path, run: dict, cases: list[dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(junit_xml(run, cases), encoding="utf-8")
    except OSError as exc:
        raise HarnessError(f"cannot write JUnit XML to {path}: {exc.strerror}") from None
