"""Bench cases on one rank: time mlx-lm's own generation path as `mlx_lm.benchmark` does.

For each bench case the model is built fresh (strategies may patch classes), sharded by its
strategy, given `mlx_lm.benchmark`'s prompts (its random ids from `mx.random.seed(0)`, id
for id, the same on every rank) and a tokenizer with no end-of-sequence token (no early
stop), then run through `stream_generate` at batch 1 and `batch_generate` above, with the
case's `prefill_step_size`: warm-up generations first, then the timed trials. Each trial's numbers
are the ones mlx-lm computes and `mlx_lm.benchmark` prints: prompt tok/s, generation tok/s,
peak memory (GB, this process, from the loaded model on), plus the prompt time (the time to
the first token at batch 1; the batch's prompt processing time above) and the wall time.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import mlx.core as mx

from harness.case import BenchCase
from harness.errors import model_code
from harness.models.build import tiny_config
from harness.models.checkpoint.load import case_checkpoint
from harness.models.checkpoint.read import read_config
from harness.models.checkpoint.write import write_tokenizer
from harness.run.protocol import Message, Result, Start
from harness.run.rank.one_case import ShardingFailed, sharded_model

# The per-trial numbers every rank reports, in the order they travel in all_gather.
FIELDS = ("prompt_tps", "generation_tps", "ttft_s", "peak_memory_gb", "wall_s")


def run_on_rank(spec: dict, group) -> Iterator[tuple[Message, dict]]:
    """Every bench case of a job (`spec["cases"]`: index and bench case) on this rank, as
    the worker's messages: `start` when a case begins (the watchdog's clock), then `result`
    with every rank's trials (gathered, so every rank yields the same); no arrays."""
    for entry in spec["cases"]:
        index, bench = entry["index"], BenchCase.from_dict(entry["case"])
        yield Start("bench", [index]), {}
        try:
            trials = gather(time_case(bench, group), group)
        except ShardingFailed as exc:  # the ranks are still in step: on to the next case
            yield Result(index, failures=exc.failures), {}
            continue
        yield Result(index, trials=trials), {}


def gather(trials: list[dict], group) -> list[dict]:
    """Every rank's trials, as rows with their rank and trial number."""
    local = mx.array([[trial[f] for f in FIELDS] for trial in trials], dtype=mx.float32)
    if group is not None and group.size() > 1:
        everyone = mx.distributed.all_gather(local, group=group)
    else:
        everyone = local
    rows = everyone.reshape(-1, len(trials), len(FIELDS)).tolist()
    return [
        {"rank": rank, "trial": trial, **dict(zip(FIELDS, values, strict=True))}
        for rank, per_rank in enumerate(rows)
        for trial, values in enumerate(per_rank)
    ]


def time_case(bench: BenchCase, group) -> list[dict]:
    """This rank's timed trials of one bench case, after its warm-up generations."""
    from mlx_lm.generate import generation_stream
    from mlx_lm.utils import load_tokenizer

    case = bench.case
    model = sharded_model(case, group)
    folder = case_checkpoint(case) if (case.layout or case.checkpoint) else _zoo_tokenizer()
    tokenizer = load_tokenizer(folder, tokenizer_config_extra={"trust_remote_code": False})
    # Peak memory from here on: the sharded weights and generation, what a user's process
    # holds. The load's own peak is the harness's (its key-coverage check reads the whole
    # checkpoint; a zoo model is built whole before the strategy shards it).
    mx.clear_cache()
    mx.reset_peak_memory()
    # As mlx_lm.benchmark: no end-of-sequence token, so every trial generates all tokens.
    tokenizer.eos_token_ids = []
    generate = _single if bench.batch_size == 1 else _batched
    prompts = _prompts(bench, group)
    trials = []
    with model_code():
        for _ in range(bench.warmup):
            generate(model, tokenizer, prompts, bench)
        for _ in range(bench.num_trials):
            tic = time.perf_counter()
            trial = generate(model, tokenizer, prompts, bench)
            trials.append({**trial, "wall_s": time.perf_counter() - tic})
        # generate_step schedules the step after the last token before it stops: let that
        # step's collectives finish on the generation stream, or the next collective on
        # another stream (the gather, the next case's load) interleaves with them on the ring.
        mx.synchronize(generation_stream)
    return trials


def _prompts(bench: BenchCase, group) -> list[list[int]]:
    """mlx_lm.benchmark's prompts, id for id: batch x prompt-tokens random ids below the
    vocab size. It seeds 0 before it loads and draws after, so its ids depend on the random
    draws of what loading constructs (initial parameter values): one model at 1 rank
    (`load`); at more, `sharded_load` builds a lazy model to plan (pipelined for pp), then
    the one it loads, then shards it (tp's sharded layers are new modules). For a
    checkpoint those constructions are repeated here, lazily (no weight is read); a zoo
    model, which mlx_lm.benchmark cannot load, draws right after the seed."""
    from harness.models import mlx_lm_api

    case = bench.case
    mx.random.seed(0)
    if case.layout or case.checkpoint:
        path = case_checkpoint(case)
        config = read_config(path)
        build = lambda: mlx_lm_api.load_model(path, mlx_lm_api.model_classes)  # noqa: E731
        planned = build()
        if group is not None and group.size() > 1:
            if case.strategy == "pp":
                planned.model.pipeline(group)
            loaded = build()
            if case.strategy == "tp":
                loaded.shard(group)
            elif case.strategy == "pp":
                loaded.model.pipeline(group)
    else:
        config = tiny_config(case)
    vocab_size = config.get("vocab_size") or config["text_config"]["vocab_size"]
    return mx.random.randint(0, vocab_size, (bench.batch_size, bench.prompt_tokens)).tolist()


def _single(model, tokenizer, prompts: list[list[int]], bench: BenchCase) -> dict:
    from mlx_lm import stream_generate

    # The last response carries the whole generation's numbers.
    *_, response = stream_generate(
        model,
        tokenizer,
        prompts[0],
        max_tokens=bench.generation_tokens,
        prefill_step_size=bench.prefill_step_size,
    )
    return {
        "prompt_tps": response.prompt_tps,
        "generation_tps": response.generation_tps,
        # stream_generate's prompt time ends at the first generated token.
        "ttft_s": response.prompt_tokens / response.prompt_tps,
        "peak_memory_gb": response.peak_memory,
    }


def _batched(model, tokenizer, prompts: list[list[int]], bench: BenchCase) -> dict:
    from mlx_lm import batch_generate

    stats = batch_generate(
        model,
        tokenizer,
        prompts,
        max_tokens=bench.generation_tokens,
        prefill_step_size=bench.prefill_step_size,
    ).stats
    return {
        "prompt_tps": stats.prompt_tps,
        "generation_tps": stats.generation_tps,
        "ttft_s": stats.prompt_time,
        "peak_memory_gb": stats.peak_memory,
    }


@cache
def _zoo_tokenizer() -> Path:
    """The byte-level tokenizer the harness writes into checkpoints (256 ids, the zoo's
    vocabulary), for a zoo model built in memory; written once per process."""
    folder = Path(tempfile.mkdtemp(prefix="harness-tokenizer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    write_tokenizer(folder)
    return folder
