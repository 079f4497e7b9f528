"""Benchmark, not a test: `harness bench`'s timing (harness.run.rank.bench.time_case) against
`mlx_lm.benchmark`'s own single_bench, alternating in ONE process at 1 rank, so a busy
machine's drift hits both alike (ci/bench/crosscheck.py compares the two command lines).

Usage: .venv/bin/python ci/bench/interleaved.py CHECKPOINT [-p 128] [-g 32] [--reps 12]
"""

from __future__ import annotations

import argparse
import statistics

import mlx.core as mx
from mlx_lm import load, stream_generate

from harness.case import BenchCase, Case
from harness.run.rank.bench import time_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-p", type=int, default=128)
    parser.add_argument("-g", type=int, default=32)
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--reps", type=int, default=12)
    args = parser.parse_args()

    # As mlx_lm.benchmark's main() does at 1 rank: seed, load, no eos, prompts, warm-up.
    mx.random.seed(0)
    model, tokenizer, config = load(args.checkpoint, return_config=True)
    tokenizer.eos_token_ids = []
    prompt = mx.random.randint(0, config["vocab_size"], (1, args.p)).tolist()[0]

    def single_bench():
        *_, response = stream_generate(
            model, tokenizer, prompt, max_tokens=args.g, prefill_step_size=2048
        )
        return response

    single_bench()
    case = Case(config["model_type"], "none", checkpoint=args.checkpoint)
    bench = BenchCase(case, prompt_tokens=args.p, generation_tokens=args.g, num_trials=args.n)
    group = mx.distributed.init()
    theirs: dict[str, list[float]] = {"prompt_tps": [], "generation_tps": []}
    ours: dict[str, list[float]] = {"prompt_tps": [], "generation_tps": []}
    for _ in range(args.reps):
        responses = [single_bench() for _ in range(args.n)]
        trials = time_case(bench, group)
        for metric in theirs:
            theirs[metric].append(statistics.median(getattr(r, metric) for r in responses))
            ours[metric].append(statistics.median(t[metric] for t in trials))
    for metric in theirs:
        a, b = statistics.median(ours[metric]), statistics.median(theirs[metric])
        print(f"{metric}: harness {a:.1f}, mlx_lm {b:.1f}, ratio {a / b:.2f} ({args.reps} reps)")


if __name__ == "__main__":
    main()
