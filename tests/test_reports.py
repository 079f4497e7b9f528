"""CI reports from stored rows: JUnit XML in pytest's vocabulary, GitHub markdown."""

import xml.etree.ElementTree as ET

import pytest

from harness.errors import HarnessError
from harness.records import junit, store, table

OUTCOMES = [
    {"arch": "qwen3_moe"},
    {
        "arch": "deepseek_v3",
        "status": "crash",
        "reason": "rank 1 raised ValueError: bad shape\n--- rank 1 stderr ---\nTraceback\x1b[0m x",
    },
    {"arch": "llama", "status": "fail", "diagnoses": ["scaled x2"], "reason": "rank 0: scaled x2"},
    {"arch": "gpt_oss", "status": "skip", "reason": "mlx-lm has no shard() for gpt_oss"},
    {"arch": "glm4_moe", "status": "error", "reason": "the single-rank reference failed: OSError"},
]


def stored(db_path, record_run):
    run_id = record_run(db_path, "moe", OUTCOMES)
    return store.get_run(store.open_db(db_path), run_id)


def test_junit_one_testcase_per_case(db_path, record_run, assert_junit_like_pytest, tmp_path):
    run, cases = stored(db_path, record_run)
    path = tmp_path / "reports" / "junit.xml"
    junit.write(path, run, cases)
    text = path.read_text()
    assert_junit_like_pytest(text)
    suite = ET.fromstring(text).find("testsuite")
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": "5", "failures": "2", "errors": "1", "skipped": "1"}
    by_name = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(by_name) == [row["label"] for row in cases]
    crash = by_name["deepseek_v3/base/fp32/tp"]
    assert crash.find("failure").get("message") == "crash: rank 1 raised ValueError: bad shape"
    assert crash.find("system-err").text == "--- rank 1 stderr ---\nTraceback#x1B[0m x"
    assert by_name["llama/base/fp32/tp"].find("failure").get("message") == "fail: scaled x2"
    assert by_name["gpt_oss/base/fp32/tp"].find("skipped").get("message").startswith("mlx-lm")
    assert by_name["glm4_moe/base/fp32/tp"].find("error") is not None
    assert list(by_name["qwen3_moe/base/fp32/tp"]) == []
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["mlx_version"] == run["mlx_version"]


def test_junit_unwritable_path_is_one_sentence(db_path, record_run, tmp_path):
    run, cases = stored(db_path, record_run)
    (tmp_path / "file").write_text("")
    with pytest.raises(HarnessError, match="^cannot write JUnit XML to .*junit.xml: "):
        junit.write(tmp_path / "file" / "junit.xml", run, cases)


def test_markdown_table(db_path, record_run):
    run, cases = stored(db_path, record_run)
    text = table.markdown(run, cases)
    lines = text.splitlines()
    header = lines.index("| " + " | ".join(c.replace("|", "\\|") for c in table.COLUMNS) + " |")
    rows = lines[header + 2 : header + 2 + len(cases)]
    assert [r.count(" | ") for r in rows] == [len(table.COLUMNS) - 1] * len(cases)
    assert "| **crash** |" in rows[1] and "rank 1 raised ValueError: bad shape |" in rows[1]
    assert "| pass |" in rows[0]
    assert text.count("<details>") == 3  # the failing cases' full reasons
    assert f"run {run['id']}: moe on 2 rank(s): failed" in lines[0]


def test_report_markdown_command(run_cli, db_path, record_run):
    record_run(db_path, "smoke", [{"arch": "llama"}])
    record_run(db_path, "dense", [{"arch": "qwen3"}])
    result = run_cli("report", "--markdown", "--db", db_path, "--run", "smoke")
    assert result.code == 0, result.err
    assert result.out.startswith("### run 1: smoke") and "| llama | base | fp32 |" in result.out
    assert run_cli("report", "--markdown", "--db", db_path).out.startswith("### run 2: dense")
