"""The property table: every invariant by name, with its examples and its check, in the
order runs report them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from harness.props.attention import attention_examples, check_attention_heads
from harness.props.experts import (
    check_switch_expert_parallel,
    check_switch_tensor_parallel,
    switch_examples,
)
from harness.props.linear import (
    check_all_to_sharded,
    check_fused_segments,
    check_shard_unshard,
    check_sharded_to_all,
    linear_examples,
)
from harness.props.pipeline import check_pipeline, pipeline_examples


@dataclass(frozen=True)
class Property:
    name: str
    summary: str
    examples: Callable[[st.SearchStrategy[int]], st.SearchStrategy]
    check: Callable[[Any, Any], None]


PROPERTIES: tuple[Property, ...] = (
    Property(
        "shard_unshard",
        "gathered shards rebuild weight, scales, biases exactly",
        linear_examples,
        check_shard_unshard,
    ),
    Property(
        "all_to_sharded",
        "gathered all-to-sharded outputs equal the layer",
        functools.partial(linear_examples, shardings=("all-to-sharded",)),
        check_all_to_sharded,
    ),
    Property(
        "sharded_to_all",
        "all-summed sharded-to-all output equals the layer, bias once",
        functools.partial(linear_examples, shardings=("sharded-to-all",)),
        check_sharded_to_all,
    ),
    Property(
        "fused_segments",
        "segment-aware [q,k,v] split equals per-section; contiguous does not",
        functools.partial(linear_examples, shardings=("all-to-sharded",), fused=True),
        check_fused_segments,
    ),
    Property(
        "switch_tensor_parallel",
        "intermediate-sliced experts sum to the block; misaligned do not",
        switch_examples,
        check_switch_tensor_parallel,
    ),
    Property(
        "switch_expert_parallel",
        "expert-sliced, routing-masked experts sum to the block",
        functools.partial(switch_examples, expert_parallel=True),
        check_switch_expert_parallel,
    ),
    Property(
        "attention_heads",
        "head-parallel grouped-KV attention equals full attention",
        attention_examples,
        check_attention_heads,
    ),
    Property(
        "pipeline_split",
        "any split vector of layers reproduces the full stack",
        pipeline_examples,
        check_pipeline,
    ),
)
