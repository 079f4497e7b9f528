"""The service and compare on real runs: two `harness run --suite smoke` (single rank) write
to the database the service is answering from; compare stays quiet on them, flags a flip
constructed from them and not one slow run; the runs' JUnit XML reads back."""

import json
import sqlite3
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from harness.records import store


def smoke_run(db, junit) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--suite", "smoke", "--ranks", "1"]
        + ["--repeats", "5", "--db", str(db), "--junit", str(junit)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory, get, start_service, stop):
    root = tmp_path_factory.mktemp("live")
    db = root / "nightly.db"
    store.open_db(db)  # an empty harness database, as before the first night
    proc, url = start_service("--db", str(db))
    answers, stop_polling = [], threading.Event()

    def poll():
        while not stop_polling.is_set():
            status, content_type, body = get(url + "nightly/latest_runs.json?_shape=array")
            answers.append((status, content_type, json.loads(body) if status == 200 else body))
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        runs = [smoke_run(db, root / f"junit{i}.xml") for i in (1, 2)]
    finally:
        stop_polling.set()
        poller.join()
        stop(proc)
    yield {"db": db, "root": root, "runs": runs, "answers": answers}


def test_service_answers_while_a_run_writes(live):
    assert all(run.returncode == 0 for run in live["runs"]), live["runs"][0].stderr
    answers = live["answers"]
    assert answers and all(a[:2] == (200, "application/json") for a in answers)
    seen = [(row["run_id"], row["status"], row["cases"]) for _, _, rows in answers for row in rows]
    assert any(status == "running" for _, status, _ in seen), "never saw a run in progress"
    assert (2, "passed", 5) in seen  # and then the finished second run


def test_compare_is_quiet_on_two_runs_of_the_same_build(live, run_cli):
    result = run_cli("compare", "1", "2", "--db", str(live["db"]))
    assert result.code == 0, result.out
    assert "5 cases in both runs" in result.out and "no regression" in result.out


def test_compare_flags_a_constructed_flip_but_not_one_slow_run(live, run_cli, tmp_path):
    copy = tmp_path / "constructed.db"
    with sqlite3.connect(live["db"]) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:
        query = "select id, timings from cases where run_id = ? order by idx"
        (first, _), (second, _) = list(conn.execute(query, [2]))[:2]
        baseline = json.loads(list(conn.execute(query, [1]))[1][1])
        conn.execute(
            "update cases set status = 'fail', diagnoses = ? where id = ?",
            [json.dumps(["scaled x2"]), first],
        )
        # The second case: every timed call 100x slower than the first run's (measured from
        # the baseline, so the machine's noise in run 2 cannot hide or fake it).
        rank = baseline["ranks"]["0"]
        for part in ("prefill", "decode"):
            rank[f"{part}_samples"] = [s * 100 for s in rank[f"{part}_samples"]]
            rank[f"{part}_tok_s"] /= 100
        conn.execute(
            "update cases set timings = ?, prefill_tok_s = ?, decode_tok_s = ? where id = ?",
            [json.dumps(baseline), rank["prefill_tok_s"], rank["decode_tok_s"], second],
        )
    result = run_cli("compare", "1", "2", "--db", str(live["db"]), "--db", str(copy))
    assert result.code == 1, result.out
    assert "newly failing" in result.out and "scaled x2" in result.out
    # One slow run is no evidence of a regression: tok/s is judged against the history of
    # the run's setup once there is enough of it (tests/test_rundiff.py, records/noise.py).
    assert "tok/s not judged" in result.out
    assert not [line for line in result.out.splitlines() if "tok/s" in line and "yes" in line]


def test_junit_from_harness_run_reads_back(live, assert_junit_like_pytest):
    text = (live["root"] / "junit2.xml").read_text()
    assert_junit_like_pytest(text)
    suite = ET.fromstring(text).find("testsuite")
    with sqlite3.connect(live["db"]) as conn:
        labels = [r[0] for r in conn.execute("select label from cases where run_id = 2")]
    assert [c.get("name") for c in suite.iter("testcase")] == labels
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "0", "0")


def test_history_page_of_the_real_runs(live, get, start_service, stop):
    proc, url = start_service("--db", str(live["db"]))
    try:
        status, _, body = get(url + "-/history?suite=smoke")
    finally:
        stop(proc)
    page = body.decode()
    assert status == 200 and page.count("<circle") == 4  # 2 runs x 2 charts
