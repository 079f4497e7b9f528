"""Bench cases on 2 real ranks: mlx-lm's tp, pp and an external strategy in one launch,
every rank's trials gathered."""

import json
import subprocess
import sys
import textwrap

import pytest

from harness.bench_case import BenchCase
from harness.case import Case
from harness.run import launch

pytestmark = pytest.mark.multirank

# Rank 0 prints what run_on_rank yields: the dicts the worker sends back to the parent.
RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import mlx.core as mx
    from harness.run.bench import run_on_rank

    group = mx.distributed.init()
    for message, _ in run_on_rank(json.loads(sys.argv[1]), group):
        if group.rank() == 0 and message["type"] == "result":
            print("BENCH " + json.dumps(message), flush=True)
    """
)


def test_strategies_side_by_side_in_one_launch(tmp_path):
    shapes = {"prompt_tokens": 32, "generation_tokens": 6, "num_trials": 2}
    benches = [
        BenchCase(Case("qwen3_moe", "tp", layout="mlx"), **shapes),
        BenchCase(Case("qwen3_moe", "pp", layout="mlx"), **shapes),
        BenchCase(Case("qwen3_moe", "harness.faults.controls:manual_tp"), **shapes),
        BenchCase(Case("qwen3_moe", "tp"), batch_size=2, **shapes),
    ]
    spec = {"cases": [{"index": i, "case": b.to_dict()} for i, b in enumerate(benches)]}
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    argv = [
        launch.find_launcher(),
        "--python",
        sys.executable,
        "-n",
        "2",
        "--backend",
        "ring",
        "--starting-port",
        str(launch.free_port_block(2)),
        str(script),
        json.dumps(spec),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    outs = [json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    assert [o["index"] for o in outs] == [0, 1, 2, 3]
    for out in outs:
        assert {(t["rank"], t["trial"]) for t in out["trials"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
        assert all(t["prompt_tps"] > 0 and t["generation_tps"] > 0 for t in out["trials"]), out
        assert all(t["peak_memory_gb"] > 0 for t in out["trials"])
