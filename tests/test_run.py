"""Single-rank runs through the CLI and the library: verdicts, stored rows, report."""

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from harness.case import Case
from harness.records import store
from harness.run.parent.plan import RunOptions
from harness.run.parent.session import run
from harness.run.rank import forward


def test_cli_run_stores_run_and_cases(run_cli, db_path):
    result = run_cli("run", "--suite", "smoke", "--repeats", "1", "--db", db_path)
    assert result.code == 0, result.out + result.err
    assert "pass" in result.out
    db = store.open_db(db_path)
    run_row, cases = store.get_run(db, None)
    assert run_row["status"] == "passed"
    assert run_row["ranks"] == 1 and run_row["backend"] == "in-process"
    assert run_row["mlx_version"] and run_row["mlx_lm_version"] and run_row["platform"]
    assert run_row["command"].startswith("harness run --suite smoke")
    assert run_row["started"] <= run_row["finished"]
    assert run_row["cases"] == len(cases) == 5 and run_row["passed"] == 5
    for row in cases:
        assert row["status"] == "pass"
        assert row["max_abs"] is not None and row["max_abs"] <= 1e-4
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0
        assert row["ref_prefill_tok_s"] > 0 and row["peak_memory"] > 0
        timings = json.loads(row["timings"])
        assert len(timings["ranks"]["0"]["prefill_samples"]) == 1
        assert Case.from_dict(json.loads(row["case"])).key() == row["case_key"]


def test_report_prints_stored_run(run_cli, db_path):
    run_cli("run", "--arch", "qwen3_moe", "--strategy", "tp", "--repeats", "1", "--db", db_path)
    result = run_cli("report", "--db", db_path)
    assert result.code == 0
    assert "qwen3_moe" in result.out and "mlx-lm" in result.out and "pass" in result.out


def test_wrong_strategy_fails_run_with_exit_code_1(run_cli, db_path, tmp_path):
    strategy = tmp_path / "mine.py"
    strategy.write_text(
        "import mlx.core as mx\n"
        "def shard(model, group):\n"
        "    # a 'sharding' that corrupts the second layer's attention output projection\n"
        "    layer = model.model.layers[1]\n"
        "    layer.self_attn.o_proj.weight = layer.self_attn.o_proj.weight * 1.01\n"
    )
    result = run_cli(
        "run",
        "--arch",
        "qwen3_moe",
        "--strategy",
        f"{strategy}:shard",
        "--repeats",
        "1",
        "--db",
        db_path,
    )
    assert result.code == 1
    _, cases = store.get_run(store.open_db(db_path), None)
    assert [c["status"] for c in cases] == ["fail"]
    assert cases[0]["first_divergent_layer"] == 1
    assert cases[0]["first_divergent_part"] == "attention"


def test_unsupported_strategy_is_skipped_with_reason():
    results = list(run([Case("qwen3_next", "tp")], RunOptions(ranks=1, repeats=1)))
    assert results[0].status == "skip"
    assert "tensor-parallel" in results[0].reason


def _start_moe_run(db_path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    argv = [sys.executable, "-m", "harness.cli", "run", "--suite", "moe", "--repeats", "1"]
    return subprocess.Popen(
        [*argv, "--db", str(db_path)], stdout=subprocess.DEVNULL, stderr=stderr, text=True
    )


def _wait_for_rows(db_path, wanted: int, seconds: float = 120) -> int:
    """Poll the database (as another reader would) until `wanted` case rows exist."""
    deadline, rows = time.monotonic() + seconds, 0
    while time.monotonic() < deadline and rows < wanted:
        time.sleep(0.2)
        if db_path.exists():
            try:
                rows = sqlite3.connect(db_path).execute("select count(*) from cases").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0
    return rows


def test_killed_run_keeps_finished_cases(tmp_path):
    """SIGKILL mid-run: the rows already written stay, the run stays marked unfinished."""
    db_path = tmp_path / "killed.db"
    proc = _start_moe_run(db_path)
    rows = _wait_for_rows(db_path, 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert rows >= 2
    run_row, cases = store.get_run(store.open_db(db_path), None)
    assert run_row["status"] == "running" and run_row["finished"] is None
    assert len(cases) >= rows
    assert all(c["status"] in ("pass", "skip") for c in cases)


def test_sigterm_marks_run_interrupted(tmp_path):
    db_path = tmp_path / "term.db"
    proc = _start_moe_run(db_path, stderr=subprocess.PIPE)
    assert _wait_for_rows(db_path, 1) >= 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    run_row, cases = store.get_run(store.open_db(db_path), None)
    assert run_row["status"] == "interrupted" and cases


def test_a_run_with_its_suites_strategy_overridden_is_stored_as_its_own_series(run_cli, db_path):
    result = run_cli(
        "run", "--suite", "smoke", "--strategy", "none", "--repeats", "1", "--db", db_path
    )
    assert result.code == 0, result.out + result.err
    run_row, _ = store.get_run(store.open_db(db_path), None)
    assert run_row["suite"] == "smoke --strategy none"


def test_a_clear_tok_s_drop_is_timed_again_and_flagged_in_its_first_run(
    run_cli, db_path, record_run, monkeypatch
):
    """A case at a third of its history's speed in every part gets a second look in the
    same run (`loop.second_look`), still slow there, and `harness compare` flags it at this
    first slow run; the other cases are neither timed again nor flagged.

    The ranks' clock is a counter (every timed model call takes 10 ms), so the verdicts do
    not depend on how fast this machine runs: a run on a loaded machine once failed here."""
    ticks = itertools.count(0.0, 0.01)
    monkeypatch.setattr(forward, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    archs = ["llama", "qwen3", "qwen2", "ministral3", "mellum"]
    flags = [arg for arch in archs for arg in ("--arch", arch)]
    first = run_cli("run", *flags, "--strategy", "none", "--db", db_path)
    assert first.code == 0, first.out
    _, cases = store.get_run(store.open_db(db_path), None)
    outcomes = []
    for row in cases:
        rank = json.loads(row["timings"])["ranks"]["0"]
        seconds = (rank["prefill_samples"], rank["decode_samples"])
        assert all(abs(x - 0.01) < 1e-9 for part in seconds for x in part), seconds
        if row["arch"] == "qwen3":  # its history three times as fast as this machine runs it
            seconds = tuple([s / 3 for s in part] for part in seconds)
        outcomes.append({"arch": row["arch"], "strategy": "none", "seconds": seconds})
    for _ in range(10):
        record_run(db_path, "archs", outcomes, ranks=1)
    slow = run_cli("run", *flags, "--strategy", "none", "--db", db_path)
    assert slow.code == 0, slow.out  # correctness passes: speed is compare's business
    assert "timed again (tok/s under 0.5x its history in a part): qwen3/" in slow.out
    run_row, cases = store.get_run(store.open_db(db_path), None)
    looked = [c["arch"] for c in cases if "second_look" in json.loads(c["timings"])]
    assert looked == ["qwen3"]
    result = run_cli("compare", str(run_row["id"] - 1), str(run_row["id"]), "--db", db_path)
    assert result.code == 1, result.out
    flagged = [line for line in result.out.splitlines() if "tok/s" in line and "0.3" in line]
    assert flagged and all("qwen3" in line for line in flagged), result.out
    assert "every part under 0.5x their median, still so at the run's second look" in " ".join(
        result.out.split()
    )


def test_a_stream_of_one_local_rank_runs_in_this_process():
    """`CaseStream` at one local rank launches nothing: each batch runs here, judged as a
    run judges it; a case of a strategy that does not import is the user's mistake."""
    from harness.errors import HarnessError
    from harness.run.parent.stream import CaseStream

    with CaseStream(RunOptions(repeats=0)) as stream:
        first = stream.run([Case("qwen3_moe", "none", decode_steps=1)])
        second = stream.run([Case("llama", "none", decode_steps=1), Case("mixtral", "tp")])
        with pytest.raises(HarnessError, match="no_such_module"):
            stream.run([Case("llama", "no_such_module:shard")])
        assert stream.launches == 0
    assert [r.status for r in first + second] == ["pass", "pass", "skip"]
    assert first[0].golden is None and first[0].reference == "single-rank"
