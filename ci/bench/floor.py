"""The speed floor of DESIGN.md: one 2-rank launch of a bare script that, for the same 30
cases as floor.toml, builds the tiny model, runs the unsharded prefill + 4 cached decode
steps, shards, runs them again and compares. bench.sh times it against the harness."""

import time

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from harness.case import DEFAULT_PROMPTS, Case
from harness.models.build import build_model

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


def main() -> None:
    started = time.perf_counter()
    group = mx.distributed.init()
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
    main()
