"""The speed floor (README, "Benchmarks"): a bare script that, for the same 30 cases as floor.toml,
builds the tiny model, runs the unsharded prefill + 4 cached decode steps, shards, runs
them again and compares, on 2 ranks. bench.sh times it against the harness.

No launcher stands between the ranks: `python ci/bench/floor.py` starts its 2 ranks
itself, each with MLX_RANK and an MLX_HOSTFILE as mlx.launch's ring backend writes them
for local ranks (a JSON list, one list of "ip:port" per rank), and waits for them. A plain
mlx.launch would add its own start-up and per-rank I/O threads, which spin on a 2-core
machine and so are no floor.

`--wait-for-rank0`: the last rank waits until rank 0 listens before it joins the ring, as
the harness's ranks do (harness.run.rank.ring): a bare script's ranks race for the ring's
connections, and the one that loses waits out mlx's one-second retry.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

RANKS = 2
TP = [
    "qwen3_moe",
    "deepseek_v3",
    "glm4_moe",
    "gpt_oss",
    "minimax",
    "kimi_k25",
    "mistral4",
    "step3p5",
]
PP = ["qwen3_moe", "deepseek_v3", "glm4_moe", "kimi_k25", "mistral4", "qwen3_next", "deepseek_v32"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(wait_for_rank0: bool) -> int:
    """Start the ranks, this script again under MLX_RANK, and wait for them all."""
    fd, hostfile = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump([[f"127.0.0.1:{port}"] for port in free_ports(RANKS)], fh)
    try:
        ranks = [
            subprocess.Popen(
                [sys.executable, __file__],
                env={
                    **os.environ,
                    "MLX_RANK": str(rank),
                    "MLX_HOSTFILE": hostfile,
                    "FLOOR_WAIT_FOR_RANK0": "1" if wait_for_rank0 else "",
                },
            )
            for rank in range(RANKS)
        ]
        return max(abs(p.wait()) for p in ranks)
    finally:
        os.unlink(hostfile)


def rank_main() -> None:
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    from harness.case import DEFAULT_PROMPTS, Case
    from harness.models.build import build_model

    def forward(model, tokens: mx.array) -> list[np.ndarray]:
        """Prefill and 4 greedy decode steps, evaluated call by call (pipeline needs it)."""
        cache = make_prompt_cache(model)
        outputs = [model(tokens, cache=cache)]
        mx.eval(outputs[-1])
        for _ in range(4):
            step = mx.argmax(outputs[-1][:, -1], -1)[:, None]
            outputs.append(model(step, cache=cache))
            mx.eval(outputs[-1])
        return [np.array(o) for o in outputs]

    started = time.perf_counter()
    if os.environ.get("FLOOR_WAIT_FOR_RANK0"):
        from harness.run.rank.ring import wait_for_rank0

        wait_for_rank0()
    group = mx.distributed.init(backend="ring", strict=True)
    tokens = mx.array(DEFAULT_PROMPTS)
    cases, worst = 0, 0.0
    for strategy, archs in (("tp", TP), ("pp", PP)):
        for arch in archs:
            for quant in (None, 4):
                case = Case(arch, strategy, quant=quant)
                model, _ = build_model(case)
                reference = forward(model, tokens)
                model, _ = build_model(case)
                if strategy == "tp":
                    model.shard(group)
                else:
                    model.model.pipeline(group)
                mx.eval(model.parameters())
                sharded = forward(model, tokens)
                for a, b in zip(reference, sharded, strict=True):
                    worst = max(worst, float(np.abs(a - b).max()))
                cases += 1
    if group.rank() == 0:
        print(f"{cases} cases, worst max|Δ| {worst:.1e}, {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    if "MLX_RANK" in os.environ:
        rank_main()
    else:
        sys.exit(launch("--wait-for-rank0" in sys.argv[1:]))
