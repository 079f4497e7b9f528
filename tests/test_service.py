"""`harness serve` in a subprocess on a free loopback port, asked over real HTTP: canned
queries, the goldens index and downloads, the history page, read-only, loopback only."""

import html
import json
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest

from harness.case import BenchCase, Case
from harness.paths import SHIPPED_GOLDENS
from harness.records import goldens

REPO_GOLDENS = SHIPPED_GOLDENS
SERVED_ARCHS = ("llama", "qwen3_moe")


@pytest.fixture(scope="module")
def served(tmp_path_factory, record_run, start_service, stop):
    root = tmp_path_factory.mktemp("served")
    db = root / "results.db"
    healthy = [{"arch": "qwen3_moe"}, {"arch": "deepseek_v3"}, {"arch": "llama", "strategy": "pp"}]
    broken = {
        "arch": "qwen3_moe",
        "status": "fail",
        "diagnoses": ["scaled x2", "first divergent layer 1 (mlp/moe)"],
        "reason": "rank 0: scaled x2\n--- rank 1 stderr ---\nall_sum twice",
    }
    run_a = record_run(db, "moe", healthy)
    run_b = record_run(db, "moe", [broken, *healthy[1:]])
    directory = root / "goldens"
    for arch in SERVED_ARCHS:
        shutil.copytree(REPO_GOLDENS / arch, directory / arch)
    proc, url = start_service("--db", str(db), "--goldens", str(directory))
    yield {"url": url, "db": db, "goldens": directory, "runs": (run_a, run_b)}
    stop(proc)


def test_latest_runs(served, get_json):
    rows = get_json(served["url"] + "results/latest_runs.json?_shape=array")
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == served["runs"][1]
    expected = {"suite": "moe", "ranks": 2, "status": "failed", "cases": 3, "passed": 2}
    assert {k: row[k] for k in expected} == expected
    assert (row["failed"], row["skipped"]) == (1, 0)
    assert {"harness_sha", "mlx_version", "mlx_lm_version", "started"} <= set(row)


def test_case_history(served, get_json):
    key = Case("qwen3_moe").key()
    rows = get_json(served["url"] + f"results/case_history.json?_shape=array&case_key={key}")
    assert [(r["run_id"], r["status"]) for r in rows] == [  # newest first
        (served["runs"][1], "fail"),
        (served["runs"][0], "pass"),
    ]
    assert {
        "max_abs",
        "kl_max",
        "prefill_tok_s",
        "decode_tok_s",
        "mlx_version",
        "mlx_lm_version",
        "harness_sha",
    } <= set(rows[0])
    assert rows[1]["decode_tok_s"] == pytest.approx(1000.0)


def test_run_failures_and_status_changes(served, get_json):
    run_a, run_b = served["runs"]
    failures = get_json(served["url"] + f"results/run_failures.json?_shape=array&run_id={run_b}")
    assert [(r["arch"], r["status"]) for r in failures] == [("qwen3_moe", "fail")]
    assert json.loads(failures[0]["diagnoses"])[0] == "scaled x2"
    assert "all_sum twice" in failures[0]["reason"]
    changes = get_json(
        served["url"] + f"results/status_changes.json?_shape=array&run_a={run_a}&run_b={run_b}"
    )
    assert [(c["arch"], c["status_a"], c["status_b"]) for c in changes] == [
        ("qwen3_moe", "pass", "fail")
    ]


def test_goldens_index(served, get_json):
    rows = get_json(served["url"] + "goldens/goldens.json?_shape=array&_size=max")
    assert [r["key"] for r in rows] == goldens.stored_keys(served["goldens"])
    for row in rows:
        npz, sidecar = goldens.paths(row["key"], served["goldens"])
        meta = json.loads(sidecar.read_text())
        assert (row["sha256"], row["size"]) == (meta["sha256"], npz.stat().st_size)
        assert (row["arch"], row["precision"], row["dtype"]) == (
            npz.parent.name,
            meta["precision"],
            meta["dtype"],
        )
        assert row["mlx_lm_version"] == meta["mlx_lm_version"] and row["created"]


def test_goldens_index_follows_the_directory(tmp_path, record_run, get_json, start_service, stop):
    db, directory = tmp_path / "results.db", tmp_path / "goldens"
    record_run(db, "smoke", [{"arch": "llama"}])
    shutil.copytree(REPO_GOLDENS / "llama", directory / "llama")
    proc, url = start_service("--db", str(db), "--goldens", str(directory))
    try:
        before = get_json(url + "goldens/goldens.json?_shape=array&_size=max")
        shutil.copytree(REPO_GOLDENS / "qwen3", directory / "qwen3")
        after = get_json(url + "goldens/goldens.json?_shape=array&_size=max")
    finally:
        stop(proc)
    assert {r["arch"] for r in before} == {"llama"}
    assert [r["key"] for r in after] == goldens.stored_keys(directory)
    assert {r["arch"] for r in after} == {"llama", "qwen3"}


def test_pull_into_an_empty_directory_is_byte_identical(served, run_cli, tmp_path):
    target = tmp_path / "pulled"
    result = run_cli("golden", "pull", served["url"], "--dir", str(target))
    assert result.code == 0, result.err
    originals = sorted(p.relative_to(served["goldens"]) for p in served["goldens"].rglob("*.*"))
    assert sorted(p.relative_to(target) for p in target.rglob("*.*")) == originals
    for name in originals:
        assert (target / name).read_bytes() == (served["goldens"] / name).read_bytes(), name
    again = run_cli("golden", "pull", served["url"], "--dir", str(target))
    assert again.code == 0 and f"0 new, 0 replaced, {len(originals) // 2} already" in again.out


def test_pull_one_architecture(served, run_cli, tmp_path):
    result = run_cli("golden", "pull", served["url"], "--arch", "llama", "--dir", str(tmp_path))
    assert result.code == 0, result.err
    assert [p.name for p in tmp_path.iterdir()] == ["llama"]


def test_pull_a_suite(served, run_cli, tmp_path):
    from harness.suites import load_suite

    wanted = {case.key() for case in load_suite("smoke")}
    served_keys = set(goldens.stored_keys(served["goldens"]))
    result = run_cli("golden", "pull", served["url"], "--suite", "smoke", "--dir", str(tmp_path))
    assert result.code == 0, result.err
    assert set(goldens.stored_keys(tmp_path)) == wanted & served_keys
    assert f"{len(wanted - served_keys)} not on the service" in result.out


def test_pull_never_overwrites_other_content_silently(
    served, run_cli, tmp_path, assert_one_line_error
):
    key = goldens.stored_keys(served["goldens"])[0]
    npz, sidecar = goldens.paths(key, tmp_path)
    npz.parent.mkdir(parents=True)
    npz.write_bytes(b"recorded on another machine")
    sidecar.write_text(json.dumps({"key": key, "created": "2026-01-01"}))
    result = run_cli("golden", "pull", served["url"], "--dir", str(tmp_path))
    assert_one_line_error(result, f"golden {key}", "with other content", "--force --reason")
    assert npz.read_bytes() == b"recorded on another machine"
    assert len(list(tmp_path.rglob("*.npz"))) == 1  # nothing else was written either
    result = run_cli(
        "golden", "pull", served["url"], "--dir", str(tmp_path), "--force", "--reason", "M3 run"
    )
    assert result.code == 0, result.err
    original, _ = goldens.paths(key, served["goldens"])
    assert npz.read_bytes() == original.read_bytes()
    last = json.loads(sidecar.read_text())["history"][-1]
    assert (last["reason"], last["replaced_created"]) == ("M3 run", "2026-01-01")
    assert last["pulled_from"] == served["url"].rstrip("/")


def test_case_page_charts_golden_and_last_failure(served, get):
    key = Case("qwen3_moe").key()
    status, content_type, body = get(served["url"] + f"-/case/results/{key}")
    page = body.decode()
    assert (status, content_type) == (200, "text/html")
    assert page.count("<svg") == 2 and "prefill tok/s" in page and "decode tok/s" in page
    # one series (tp on 2 ranks) with a point per run; the failing run is a red cross
    assert page.count('data-series="tp, 2 rank(s)"') == 2
    assert page.count('class="failing-mark" data-status="fail"') == 2
    # the golden: download links, never the server's directory
    assert f'href="/-/goldens/{key}.npz"' in page and f'href="/-/goldens/{key}.json"' in page
    assert str(served["goldens"]) not in page
    # the last failure's diagnosis and its run; the table newest first
    assert "Last failure: run" in page and "scaled x2" in page and "all_sum twice" in page
    run_a, run_b = served["runs"]
    assert page.index(f'href="/-/run/results/{run_b}"') < page.index(
        f'href="/-/run/results/{run_a}"'
    )
    # the old history address of a case leads here
    status, _, body = get(served["url"] + f"-/history?db=results&case_key={key}")
    assert status == 200 and body.decode().count("failing-mark") == page.count("failing-mark")
    status, _, body = get(served["url"] + "-/history?db=results&suite=moe")
    assert status == 200 and body.decode().count("<svg") == 2


def test_case_json_pages_newest_first_without_cutting(served, get_json):
    key = Case("qwen3_moe").key()
    first = get_json(served["url"] + f"-/case/results/{key}.json?_size=1")
    assert [r["run_id"] for r in first["rows"]] == [served["runs"][1]]
    second = get_json(first["next_url"])
    assert [r["run_id"] for r in second["rows"]] == [served["runs"][0]]
    assert second["next_url"] is None


def test_hud_shows_each_suites_latest_run_as_a_grid(served, get):
    status, _, body = get(served["url"])
    page = body.decode()
    assert status == 200 and 'data-suite="moe"' in page
    key = Case("qwen3_moe").key()
    # the failing cell: its status, its diagnosis on hover, a link to the case page
    cell = page[page.index(f'href="/-/case/results/{key}"') - 60 :]
    cell = cell[: cell.index("</a>")]
    assert 'class="st-fail" data-status="fail"' in cell and "scaled x2" in cell
    # the row's strip: pass then fail, so the row says it is a new failure
    row = page[page.index('data-row="qwen3_moe"') :]
    row = row[: row.index("</tr>")]
    run_a, run_b = served["runs"]
    assert row.index(f"/-/run/results/{run_a}") < row.index(f"/-/run/results/{run_b}")
    assert "new failure" in row
    healthy = page[page.index('data-row="deepseek_v3"') :]
    assert "new failure" not in healthy[: healthy.index("</tr>")]


def test_run_page_lists_every_case(served, get):
    run_b = served["runs"][1]
    status, _, body = get(served["url"] + f"-/run/results/{run_b}")
    page = body.decode()
    assert status == 200 and page.count("<tr data-case=") == 3
    assert 'data-status="fail"' in page and "scaled x2; first divergent layer 1" in page
    key = Case("qwen3_moe").key()
    assert f'href="/-/case/results/{key}"' in page and f'href="/-/goldens/{key}.npz"' in page
    assert f'href="/-/compare/results?a={served["runs"][0]}&amp;b={run_b}"' in page


def test_compare_page_is_harness_compare(served, run_cli, get):
    run_a, run_b = served["runs"]
    status, _, body = get(served["url"] + f"-/compare/results?a={run_a}&b={run_b}")
    page = body.decode()
    assert status == 200 and 'id="verdict">regressed' in page
    assert 'data-what="newly failing"' in page and "scaled x2" in page
    cli = run_cli("compare", str(run_a), str(run_b), "--db", str(served["db"]))
    assert cli.code == 1 and "newly failing" in cli.out
    _, _, latest = get(served["url"] + "-/compare/results?suite=moe")
    assert latest.decode().count('data-what="') == page.count('data-what="')


def test_case_keys_link_to_their_page(served, get):
    _, _, body = get(served["url"] + "results/cases")
    assert f"/-/case/results/{Case('llama', strategy='pp').key()}" in body.decode()


def test_goldens_link_to_downloads_and_cases_and_no_server_path_shows(served, get):
    key = Case("qwen3_moe").key()
    _, _, body = get(served["url"] + "goldens/goldens")
    page = body.decode()
    assert f'href="/-/goldens/{key}.npz"' in page and f'href="/-/case/results/{key}"' in page
    for path in ("", "goldens", "-/metadata.json", "-/plugins.json", "results/latest_runs"):
        status, _, body = get(served["url"] + path)
        assert status == 200 and str(served["goldens"]) not in body.decode(), path
        assert str(Path(served["goldens"]).resolve()) not in body.decode(), path


def test_canned_queries_read_as_tables(served, get):
    run_b = served["runs"][1]
    _, _, body = get(served["url"] + f"results/run_failures?run_id={run_b}")
    page = body.decode()
    assert "select c.idx" not in page.split("</head>")[1]  # the SQL is hidden (a click shows it)
    assert "scaled x2; first divergent layer 1 (mlp/moe)" in page  # not a JSON array
    assert "background:#cf222e" in page  # the failing status is coloured
    _, _, body = get(served["url"] + f"results/run_failures.json?_shape=array&run_id={run_b}")
    assert "golden_max_abs" in json.loads(body)[0]


def test_user_mistakes_answer_4xx_with_a_sentence_and_one_log_line(
    served, tmp_path, get, start_service, stop
):
    proc, url = start_service("--db", str(served["db"]), "--goldens", str(served["goldens"]))
    try:
        expected = {
            "-/run/results/999": (404, "there is no run 999"),
            "-/run/results/abc": (404, "not a run id"),
            "-/case/results/no-such-key": (404, "no case with key 'no-such-key'"),
            "-/case/nodb/x": (404, "no harness database named 'nodb'"),
            "-/compare/results?a=x&b=1": (400, "must be a run id"),
            "-/compare/results?a=1&b=999": (404, "no run with id 999"),
            "-/compare/results?suite=nope": (404, "no run of suite 'nope'"),
            f"-/case/results/{Case('llama', strategy='pp').key()}?range=abc": (400, "range must"),
            "?strip=-1": (400, "strip must be a positive whole number"),
            "results/cases?_sort=bogus": (400, "Cannot sort table by bogus"),
            "results/cases.json?_sort=bogus": (400, "Cannot sort table by bogus"),
            "-/goldens/..%2F..%2Fresults.npz": (404, "no golden file"),
            "-/goldens/../results.npz": (404, "no golden file '../results.npz'"),
            "-/history?db=results&bench_key=nope": (404, "no bench case with key 'nope'"),
        }
        for path, (status, sentence) in expected.items():
            got, _, body = get(url + path)
            said = html.unescape(body.decode())
            assert (got, sentence in said) == (status, True), (path, said[-600:])
        status, _, body = get(url + "results/cases.json?_sort=bogus")
        assert json.loads(body)["error"].startswith("Cannot sort")
        status, _, body = get(url + "results/run_failures?run_id=1", data=b"run_id=1")
        assert status == 405 and b"read-only" in body
    finally:
        stop(proc)
    log = proc.stderr.read()
    assert "Traceback" not in log and "│" not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) == len(expected) + 2, log  # one line per error, nothing else


def test_refuses_writes(served, get, get_json, start_service, stop):
    url, run_b = served["url"], served["runs"][1]
    assert get(url + "results.json?sql=select+1")[0] == 403  # no own SQL unless --allow-sql
    assert get(url + "results.json?sql=delete+from+runs")[0] in (400, 403)
    status, _, _ = get(url + "results/run_failures", data=f"run_id={run_b}".encode())
    assert status >= 400
    proc, open_url = start_service("--db", str(served["db"]), "--allow-sql")
    try:
        assert get_json(open_url + "results.json?sql=select+count(*)+n+from+runs&_shape=array")
        status, _, body = get(open_url + "results.json?sql=delete+from+runs")
        assert status == 400, body
    finally:
        stop(proc)
    with sqlite3.connect(served["db"]) as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 2


def _outward_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        return probe.getsockname()[0]


def test_not_reachable_on_a_non_loopback_address(served, get):
    address = _outward_address()
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback address")
    port = int(served["url"].rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, port), timeout=5).close()
    assert get(served["url"])[0] == 200  # the same port answers on loopback


def test_serve_bad_inputs(run_cli, tmp_path, record_run, assert_one_line_error):
    missing = tmp_path / "missing.db"
    assert_one_line_error(run_cli("serve", "--db", str(missing)), "no database at", "missing.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    assert_one_line_error(run_cli("serve", "--db", str(garbage)), "is not a SQLite database")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x)").connection.close()
    assert_one_line_error(run_cli("serve", "--db", str(other)), "is not a harness database")
    old = tmp_path / "old.db"
    record_run(old, "smoke", [{"arch": "llama"}])
    sqlite3.connect(old).execute("PRAGMA user_version = 4").connection.close()
    assert_one_line_error(
        run_cli("serve", "--db", str(old)), "older harness (schema 4 of", "harness report --db"
    )
    good = tmp_path / "good.db"
    record_run(good, "smoke", [{"arch": "llama"}])
    (tmp_path / "twin").mkdir()
    twin = tmp_path / "twin" / "good.db"
    record_run(twin, "smoke", [{"arch": "llama"}])
    assert_one_line_error(
        run_cli("serve", "--db", str(good), "--db", str(twin)), "both be served as 'good'"
    )
    assert_one_line_error(
        run_cli("serve", "--db", str(good), "--goldens", str(tmp_path / "nope")),
        "no goldens directory",
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_error(
            run_cli("serve", "--db", str(good), "--port", port), f"127.0.0.1:{port}", "--port 0"
        )
    assert_one_line_error(
        run_cli("serve", "--db", str(good), "--host", "no-such-host.invalid"), "cannot listen on"
    )


def test_served_files_resolve_inside_the_goldens_directory(served, get):
    status, _, _ = get(served["url"] + "-/goldens/..%2F..%2Fresults.npz")
    assert status == 404
    assert Path(served["db"]).exists()


def test_bench_runs_history_and_latest_counts(
    tmp_path, record_bench_run, get, get_json, start_service, stop
):
    """Bench runs feed the service: latest_runs counts their bench cases, bench_history
    lists rank 0's trials per run, and /-/history?bench_key= charts the medians."""
    db = tmp_path / "bench.db"
    healthy = [{"arch": "qwen3_moe"}, {"arch": "qwen3_moe", "strategy": "pp"}]
    first = record_bench_run(db, "bench", healthy)
    slow = {"arch": "qwen3_moe", "generation": [20.0, 21.0, 19.0, 20.5, 20.2]}
    crashed = {"arch": "qwen3_moe", "strategy": "pp", "status": "crash", "reason": "SIGSEGV"}
    second = record_bench_run(db, "bench", [slow, crashed])
    proc, url = start_service("--db", str(db))
    try:
        (latest,) = get_json(url + "bench/latest_runs.json?_shape=array")
        assert (latest["run_id"], latest["kind"]) == (second, "bench")
        _, _, body = get(url + "bench/latest_runs")
        assert f'<a href="/-/run/bench/{second}">bench</a>' in body.decode()
        assert (latest["cases"], latest["passed"], latest["failed"]) == (2, 1, 1)

        key = BenchCase(Case("qwen3_moe", "tp"), 32, 8).key()
        rows = get_json(url + f"bench/bench_history.json?_shape=array&bench_key={key}")
        assert [(r["run_id"], r["strategy"], r["status"]) for r in rows] == [  # newest first
            (second, "tp", "ok"),
            (second, "pp", "crash"),
            (first, "tp", "ok"),
            (first, "pp", "ok"),
        ]
        assert rows[2]["trials"] == 5 and rows[2]["generation_tps_max"] == 52.0
        assert rows[0]["generation_tps_max"] == 21.0 and rows[1]["trials"] == 0

        status, _, body = get(url + f"-/history?db=bench&bench_key={key}")
        page = body.decode()
        assert status == 200 and page.count("<svg") == 2
        assert "prompt tok/s (median)" in page and "generation tok/s (median)" in page
        # tp has a point per run; pp its timed run and, for the crash, a mark on the axis
        assert page.count('data-series="tp, 2 rank(s)"') == 2
        assert page.count("<circle") == 6
        assert page.count('class="failing-mark" data-status="crash"') == 2
        assert "crash</span>: SIGSEGV" in page

        _, _, body = get(url + "bench/bench_cases")
        assert f"/-/history?db=bench&amp;bench_key={key}" in body.decode()
        # the picker lists bench keys; a bench run's page links to each case's history
        _, _, body = get(url + "-/history?db=bench")
        assert f"bench_key={key}" in body.decode()
        _, _, body = get(url + f"-/run/bench/{second}")
        assert body.decode().count(f"bench_key={key}") == 2
    finally:
        stop(proc)


def test_a_strategy_override_is_its_own_series_and_no_compare_link_is_a_dead_end(
    tmp_path, record_run
):
    from harness import suites
    from harness.service import pages

    db = tmp_path / "series.db"
    healthy = [{"arch": "qwen3_moe"}, {"arch": "deepseek_v3"}]
    broken = [{**case, "status": "fail", "strategy": "my.py:shard"} for case in healthy]
    record_run(db, "moe", healthy)
    record_run(db, suites.series("moe", "my.py:shard"), broken)
    record_run(db, "moe", healthy)
    record_run(db, "smoke", healthy)
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    grids = {grid.suite: grid for grid in pages.hud(conn)}
    assert set(grids) == {"moe", "moe --strategy my.py:shard", "smoke"}
    moe = {row["name"]: row for row in grids["moe"].rows}
    strip = moe["qwen3_moe"]["strips"][2]
    assert [r["status"] for r in strip] == ["pass", "pass"] and moe["qwen3_moe"]["trend"] == ""
    # "latest vs the one before" only where there is one before
    assert grids["moe"].comparable and not grids["smoke"].comparable
    assert not grids["moe --strategy my.py:shard"].comparable
    assert pages.comparable_suites(conn) == ["moe"]
    assert pages.latest_pair(conn, "moe") == (1, 3)
