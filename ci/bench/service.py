"""Benchmark, not a test: `harness serve` start time (median of 5 starts, from launching
the process to the first answer of a canned query) and the latency of its pages (the HUD,
a case page, the case's JSON) and of the case-history canned query on a database of RUNS x
CASES case rows (median and p95 of 100 requests each, interleaved so load hits all alike).
Every 7th run fails one case, so the HUD's strips and the charts' failure marks are drawn.

Usage: .venv/bin/python ci/bench/service.py [RUNS=2100] [CASES=5]   (from the repository root)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.case import Case
from harness.records import store
from harness.records.result import CaseResult, case_row
from harness.status import CaseStatus, RunStatus

ARCHS = ("qwen3_moe", "deepseek_v3", "llama", "gpt_oss", "glm4_moe", "minimax", "qwen3_next")


def build(path: Path, runs: int, cases: int) -> str:
    """A database of `runs` runs of `cases` cases each (distinct keys: arch x seed); returns
    one case key, present in every run."""
    db = store.open_db(path)
    keys = []
    for r in range(runs):
        run_id = store.start_run(db, "run", "moe", 2, None, None, ["harness", "run"])
        rows = []
        for i in range(cases):
            case = Case(ARCHS[i % len(ARCHS)], seed=i // len(ARCHS))
            timings = {"prefill_tok_s": 2000.0 + r, "decode_tok_s": 500.0 + r}
            timings.update(prefill_samples=[0.008] * 3, decode_samples=[0.004] * 3, peak_memory=1)
            status, diagnoses = CaseStatus.PASS, []
            if r % 7 == 3 and i == 0:
                status, diagnoses = CaseStatus.FAIL, ["scaled x2"]
            result = CaseResult(
                i, case, 2, status, diagnoses=diagnoses, rank_timings={0: timings}, duration=0.1
            )
            rows.append({"run_id": run_id, **case_row(result)})
            keys.append(case.key())
        with db.conn:
            db["cases"].insert_all(rows)
        store.finish_run(db, run_id, RunStatus.FAILED if r % 7 == 3 else RunStatus.PASSED)
    return keys[0]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (Linux): on a loaded machine the wall time
    says more about the neighbours than about the service."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return None
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(db: Path) -> tuple[subprocess.Popen, str, float]:
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "serve", "--db", str(db), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = proc.stdout.readline().split()[1]
    get(url + f"{db.stem}/latest_runs.json?_shape=array")
    return proc, url, time.perf_counter() - began


def main(runs: int = 2100, cases: int = 5) -> None:
    db = Path(tempfile.mkdtemp()) / "history.db"
    key = build(db, runs, cases)
    count = store.open_db(db).execute("select count(*) from cases").fetchone()[0]
    starts, cpu = [], []
    for _ in range(5):
        proc, url, seconds = start(db)
        starts.append(seconds)
        cpu.append(cpu_seconds(proc.pid))
        proc.terminate()
        proc.wait()
    print(
        f"harness serve start to first answer: median {statistics.median(starts):.2f} s "
        f"(runs: {', '.join(f'{s:.2f}' for s in starts)})"
    )
    if None not in cpu:
        print(f"  its CPU time to the first answer: median {statistics.median(cpu):.2f} s")
    proc, url, _ = start(db)
    name = db.stem
    targets = {
        "HUD /": url,
        "case page": url + f"-/case/{name}/{key}",
        "case JSON (50 rows)": url + f"-/case/{name}/{key}.json",
        "case_history canned": url + f"{name}/case_history.json?_shape=array&case_key={key}",
    }
    latencies: dict[str, list[float]] = {label: [] for label in targets}
    sizes = {}
    for _ in range(100):
        for label, target in targets.items():
            began = time.perf_counter()
            sizes[label] = len(get(target))
            latencies[label].append((time.perf_counter() - began) * 1000)
    proc.terminate()
    print(f"on {count} case rows in {runs} runs (load {os.getloadavg()[0]:.1f}):")
    for label, values in latencies.items():
        values.sort()
        print(
            f"  {label:22} median {statistics.median(values):6.1f} ms, p95 {values[94]:6.1f} ms"
            f" ({sizes[label] / 1024:,.0f} KiB)"
        )


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
