"""Real 2-rank launches: each strategy, a wrong external strategy, and ranks that crash or
hang. All cases of a test go through ONE runner call (a launch costs seconds)."""

import os
import threading
import time
from pathlib import Path

import pytest

from harness.case import Case
from harness.run.parent.plan import RunOptions
from harness.run.parent.session import run

pytestmark = pytest.mark.multirank


def _results(cases, **options):
    return {r.index: r for r in run(cases, RunOptions(ranks=2, repeats=1, **options))}


def test_strategies_wrong_strategy_and_rank_failures_in_one_job():
    cases = [
        Case("qwen3_moe", "tp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:raise_on_last_rank", decode_steps=2),
        Case("deepseek_v3", "pp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:segfault_on_last_rank", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:abort_on_last_rank", decode_steps=2),
        Case("qwen3_moe", "harness.faults.reduction:double_reduce_mlp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:hang_on_last_rank", decode_steps=2),
        Case("llama", "none", decode_steps=2),
        Case("qwen3_moe", "tp", quant=4, decode_steps=2),
    ]
    results = _results(cases, timeout=15)
    assert sorted(results) == list(range(len(cases)))

    for ok in (0, 2, 7, 8):
        assert results[ok].status == "pass", (ok, results[ok].reason)
        assert set(results[ok].comparisons) == {0, 1}, "every rank's output is compared"

    raised = results[1]
    assert raised.status == "crash"
    assert "rank 1 raised RuntimeError: injected failure while sharding" in raised.reason

    segv = results[3]
    assert segv.status == "crash"
    assert "rank 1 killed by SIGSEGV" in segv.reason
    assert "Fatal Python error: Segmentation fault" in segv.reason  # the rank's stderr tail

    abort = results[4]
    assert abort.status == "crash" and "rank 1 killed by SIGABRT" in abort.reason

    wrong = results[5]
    assert wrong.status == "fail"
    assert "scaled x2" in wrong.diagnoses
    assert "first divergent layer 1 (mlp/moe)" in wrong.diagnoses

    hang = results[6]
    assert hang.status == "timeout"
    assert "did not finish within 15s" in hang.reason
    # The hung case's own duration (from the previous case's result to its own) is the
    # watchdog's 15 s plus a relaunch; the whole job's wall time depends on machine load.
    assert hang.duration < 60, "a hung rank is bounded by the case timeout"


def test_tensor_parallel_held_against_pipeline_on_the_same_ranks():
    """For a model no single host holds: no single-rank reference runs, tp is held against pp."""
    cases = [
        Case("qwen3_moe", "tp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.reduction:double_reduce_mlp", decode_steps=2),
        Case("qwen3_moe", "pp", decode_steps=2),
    ]
    results = _results(cases, reference="pp", goldens=None)
    assert results[0].status == "pass", results[0].reason
    assert results[0].reference == "pp on 2 ranks"
    assert results[1].status == "fail" and "scaled x2" in results[1].diagnoses
    assert results[2].status == "skip"
    assert "reference strategy is the case's own" in results[2].reason


def test_references_on_the_ranks_survive_model_code_that_talks_to_the_world(tmp_path):
    """mlx-lm 0.30's pipeline models all-gathered over the world in every forward, sharded
    or not. Two ranks computing two different single-rank references must not meet there."""
    import mlx_lm.models

    source = Path(mlx_lm.models.__file__).with_name("qwen3_moe.py").read_text()
    guarded = (
        "        if pipeline_size > 1:\n            h = mx.distributed.all_gather(h)[: h.shape[0]]"
    )
    assert guarded in source
    fork = tmp_path / "qwen3_moe.py"
    fork.write_text(
        source.replace(guarded, "        h = mx.distributed.all_gather(h)[: h.shape[0]]")
    )
    cases = [
        Case("qwen3_moe", "pp", decode_steps=2),
        Case("qwen3_moe", "pp", quant=4, decode_steps=2),
    ]
    results = _results(cases, goldens=None, impl={"qwen3_moe": str(fork)})
    assert [results[i].status for i in (0, 1)] == ["pass", "pass"], [
        r.reason for r in results.values()
    ]


def _launcher_cpu_seconds() -> float | None:
    """CPU seconds (user + system) used so far by this process's mlx.launch child."""
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmdline = (stat.parent / "cmdline").read_bytes()
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"mlx.launch" in cmdline and int(fields[1]) == os.getpid():
            return (int(fields[11]) + int(fields[12])) / tick
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the launcher's CPU from /proc")
def test_the_launcher_sleeps_while_the_ranks_work(tmp_path):
    """mlx.launch's per-rank threads spin on the ranks' always-writable stdin pipes unless
    the job quiets them (launch.Job._quiet_launcher): on 2 cores that took most of a core
    from the ranks. A strategy that works (sleeps) for 4 s gives the launcher time to spin."""
    slow = tmp_path / "slow.py"
    began = tmp_path / "began"
    slow.write_text(
        "import time\n\n"
        "def tp(model, group):\n"
        f"    open({str(began)!r}, 'a').write(f'{{time.monotonic()}}\\n')\n"
        "    time.sleep(4)\n"
        "    model.shard(group)\n"
    )
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample():
        while not done.wait(0.25):
            cpu = _launcher_cpu_seconds()
            if cpu is not None:
                samples.append((time.monotonic(), cpu))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = _results([Case("qwen3_moe", f"{slow}:tp", decode_steps=1)], timeout=60)
    finally:
        done.set()
        sampler.join()
    assert results[0].status == "pass", results[0].reason
    # Within the sleeping strategy's 4 s (CLOCK_MONOTONIC is the machine's, not the rank's).
    start = min(float(line) for line in began.read_text().split())
    window = [(t, cpu) for t, cpu in samples if start + 0.5 <= t <= start + 3.5]
    assert len(window) >= 4, samples
    (t0, cpu0), (t1, cpu1) = window[0], window[-1]
    assert (cpu1 - cpu0) / (t1 - t0) < 0.25, "mlx.launch spins while the ranks work"
