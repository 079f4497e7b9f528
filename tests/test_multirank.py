"""Real 2-rank launches: each strategy, a wrong external strategy, and ranks that crash or
hang. All cases of a test go through ONE runner call (a launch costs seconds)."""

import os
import signal
import subprocess
import sys
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


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the ranks' parent from /proc")
def test_local_ranks_start_with_no_launcher_between_them_and_the_harness(tmp_path, children):
    """mlx.launch costs a process start and per-rank threads that spin on 2 cores; local
    ring ranks are started directly, each with its MLX_RANK and MLX_HOSTFILE. A strategy
    that sleeps for 4 s holds the ranks while they are looked at."""
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import time\n\ndef tp(model, group):\n    time.sleep(4)\n    model.shard(group)\n"
    )
    seen: dict[int, tuple[bytes, bytes]] = {}
    allowed: dict[int, str] = {}
    done = threading.Event()

    def sample():
        while not done.wait(0.25):
            seen.update(children())
            for pid in seen:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                allowed[pid] = status.split("Cpus_allowed_list:")[1].split()[0]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = _results([Case("qwen3_moe", f"{slow}:tp", decode_steps=1)], timeout=60)
    finally:
        done.set()
        sampler.join()
    assert results[0].status == "pass", results[0].reason
    assert not [cmd for cmd, _ in seen.values() if b"mlx.launch" in cmd]
    ranks = sorted(
        env.split(b"MLX_RANK=")[1].split(b"\0")[0]
        for cmd, env in seen.values()
        if b"harness.run.rank.worker" in cmd and b"MLX_HOSTFILE=" in env
    )
    assert ranks == [b"0", b"1"], seen
    # Each rank keeps to its own share of the cores where there are enough to share.
    if len(os.sched_getaffinity(0)) >= 2:
        cores = {
            env.split(b"MLX_RANK=")[1].split(b"\0")[0]: allowed.get(pid)
            for pid, (cmd, env) in seen.items()
            if b"harness.run.rank.worker" in cmd and b"MLX_HOSTFILE=" in env
        }
        assert None not in cores.values() and cores[b"0"] != cores[b"1"], cores


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the ranks' parent from /proc")
def test_ranks_end_when_the_harness_is_killed(tmp_path, children):
    """SIGKILL to `harness run` while both ranks are inside a case: no rank is left behind
    (one waiting in a collective for a dead peer would spin for good)."""
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import time\n\ndef tp(model, group):\n    time.sleep(60)\n    model.shard(group)\n"
    )
    argv = [sys.executable, "-m", "harness.cli", "run", "--arch", "qwen3_moe", "--ranks", "2"]
    argv += ["--strategy", f"{slow}:tp", "--db", str(tmp_path / "k.db"), "--no-goldens"]
    harness = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks: list[int] = []
    deadline = time.monotonic() + 60
    while len(ranks) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        ranks = [
            pid
            for pid, (cmd, _) in children(harness.pid).items()
            if b"harness.run.rank.worker" in cmd
        ]
    assert len(ranks) == 2, "the ranks did not start"
    time.sleep(2)  # into the case: the strategy sleeps, its peer waits
    harness.kill()
    harness.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in ranks):
        time.sleep(0.2)
    alive = [pid for pid in ranks if Path(f"/proc/{pid}").exists()]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)  # leave the machine clean whatever the verdict
    assert not alive, f"ranks {alive} outlived the harness"
