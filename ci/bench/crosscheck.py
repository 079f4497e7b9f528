"""Benchmark, not a test: `harness bench` against `mlx_lm.benchmark` run by hand at the same
flags, on a tiny checkpoint, at 1 rank and at 2 ranks (tp, and pp via --pipeline).

Runs alternate between the two tools (a busy machine drifts between runs), and both sides
are summarised the same way: rank 0's median over the trials of a run. Prints every
command line, each run's medians, and the harness / mlx_lm ratio of the medians over runs.

Usage (from the repository root):
    .venv/bin/python ci/bench/crosscheck.py [--runs 3] [-p 512] [-g 128] [-b 1] [-n 5]
"""

from __future__ import annotations

import argparse
import re
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
TRIAL = re.compile(r"Trial \d+:\s+prompt_tps=([\d.]+), generation_tps=([\d.]+)")


def mlx_lm_argv(model: Path, ranks: int, strategy: str, flags: list[str]) -> list[str]:
    module = ["-m", "mlx_lm.benchmark", "--model", str(model), *flags]
    if ranks == 1:
        return [sys.executable, *module]
    pipeline = ["--pipeline"] if strategy == "pp" else []
    launcher = [str(BIN / "mlx.launch"), "-n", str(ranks), "--backend", "ring"]
    return [*launcher, "--python", sys.executable, "--", *module, *pipeline]


def harness_argv(model: Path, ranks: int, strategy: str, flags: list[str], db: Path) -> list[str]:
    return [
        str(BIN / "harness"), "bench", "--checkpoint", str(model), "--strategy", strategy,
        "--ranks", str(ranks), *flags, "--db", str(db),
    ]  # fmt: skip


def mlx_lm_medians(argv: list[str]) -> tuple[float, float]:
    # stdin stays open, as a terminal's does: on a closed stdin (EOF, /dev/null) mlx.launch's
    # main loop spins in select() and takes CPU from the ranks, which a user by hand does
    # not see. mlx_lm.benchmark prints its trials, then (2 ranks) may fail on exit while the
    # step generate_step scheduled after the last token still talks to the peer: keep them.
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        output = process.stdout.read()
        process.wait(timeout=900)
    finally:
        process.stdin.close()
    trials = [tuple(map(float, m)) for m in TRIAL.findall(output)]
    if not trials:
        raise SystemExit(f"no trials from {shlex.join(argv)}:\n{output[-2000:]}")
    return statistics.median(t[0] for t in trials), statistics.median(t[1] for t in trials)


def harness_medians(argv: list[str], db: Path) -> tuple[float, float]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select prompt_tps, generation_tps from bench_samples where rank = 0 and run_id = "
            "(select max(id) from runs)"
        ).fetchall()
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-g", type=int, default=128)
    parser.add_argument("-b", type=int, default=1)
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--configs", default="1:none,2:tp,2:pp", help="ranks:strategy,...")
    args = parser.parse_args()
    # --num-trials, not -n: harness bench's -n is --ranks, as in every harness command.
    flags = ["-p", str(args.p), "-g", str(args.g), "-b", str(args.b), "--num-trials", str(args.n)]
    work = Path(tempfile.mkdtemp(prefix="crosscheck-"))
    model, db = work / "qwen3_moe-mlx", work / "bench.db"
    write = [str(BIN / "harness"), "checkpoint", "write", "--arch", "qwen3_moe"]
    subprocess.run([*write, "--layout", "mlx", "--out", str(model)], check=True)
    for config in args.configs.split(","):
        ranks, strategy = int(config.split(":")[0]), config.split(":")[1]
        ours, theirs = harness_argv(model, ranks, strategy, flags, db), None
        theirs = mlx_lm_argv(model, ranks, strategy, flags)
        print(f"\n== {ranks} rank(s), {strategy}\n  harness:   {shlex.join(ours)}")
        print(f"  mlx_lm:    {shlex.join(theirs)}")
        runs = {"harness": [], "mlx_lm": []}
        for run in range(args.runs):
            runs["mlx_lm"].append(mlx_lm_medians(theirs))
            runs["harness"].append(harness_medians(ours, db))
            for tool in runs:
                prompt, generation = runs[tool][-1]
                print(
                    f"  run {run + 1} {tool:<8} prompt {prompt:9.1f} tok/s  "
                    f"generation {generation:8.1f} tok/s"
                )
        for i, what in enumerate(("prompt", "generation")):
            ours, theirs = ([r[i] for r in runs[tool]] for tool in ("harness", "mlx_lm"))
            ours_m, theirs_m = statistics.median(ours), statistics.median(theirs)
            print(
                f"  {what:<10} median over runs: harness {ours_m:9.1f}, mlx_lm {theirs_m:9.1f}, "
                f"ratio {ours_m / theirs_m:.2f}  (runs' medians: harness {min(ours):.1f}-"
                f"{max(ours):.1f}, mlx_lm {min(theirs):.1f}-{max(theirs):.1f})"
            )


if __name__ == "__main__":
    main()
