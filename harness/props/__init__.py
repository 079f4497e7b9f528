"""Executable shard/unshard invariants: hypothesis properties over mlx's sharding helpers.

Every check is SPMD code for one rank, `check_*(example, group, ...)`: it shards with the
real helpers (`shard_linear`, `shard_inplace`, mlx-lm's `PipelineMixin.pipeline`), talks to
the other ranks only through `mx.distributed` collectives, compares with numpy, and raises
AssertionError when the invariant breaks. Verdicts are taken on data every rank holds
after a collective, so all ranks reach the same one: a rank failing alone would leave the
others hung in the next collective.

Two executors run the same checks:
- in-process, `simulate(fn, ranks)` runs every rank here with a stand-in group and
  replays the collectives (mlx's helpers only call `group.rank()` / `group.size()`);
- multi-rank, `harness.props.rank_job` runs them under `mlx.launch` with the real group.

The sharding step of each check is a parameter (`shard_fn`, `pipeline_fn`), so a test can
feed a deliberately wrong one and see the check fail.

Modules: `simulate` (in-process ranks), `numeric` (references and tolerances), one per
family of properties (`linear`, `experts`, `attention`, `pipeline`), `registry` (the
property table), `run` (the runners) and `rank_job` (the `props` job on each launched rank).
"""

from harness.props.attention import attention_examples, check_attention_heads, head_parallel
from harness.props.experts import (
    check_switch_block,
    check_switch_expert_parallel,
    check_switch_tensor_parallel,
    expert_parallel,
    misaligned_experts,
    switch_examples,
    tensor_parallel_experts,
)
from harness.props.linear import (
    check_all_to_sharded,
    check_fused_segments,
    check_shard_unshard,
    check_sharded_to_all,
    linear_examples,
    mlx_shard_linear,
)
from harness.props.pipeline import check_pipeline, mlx_lm_pipeline, pipeline_examples
from harness.props.registry import PROPERTIES, Property
from harness.props.run import (
    MAX_SIMULATED_RANKS,
    PropertyResult,
    PropsReport,
    results_of,
    run_property,
    run_props,
    run_props_inprocess,
    simulate_check,
)
from harness.props.simulate import SimGroup, simulate

__all__ = [
    "MAX_SIMULATED_RANKS",
    "PROPERTIES",
    "Property",
    "PropertyResult",
    "PropsReport",
    "SimGroup",
    "attention_examples",
    "check_all_to_sharded",
    "check_attention_heads",
    "check_fused_segments",
    "check_pipeline",
    "check_shard_unshard",
    "check_sharded_to_all",
    "check_switch_block",
    "check_switch_expert_parallel",
    "check_switch_tensor_parallel",
    "expert_parallel",
    "head_parallel",
    "linear_examples",
    "misaligned_experts",
    "mlx_lm_pipeline",
    "mlx_shard_linear",
    "pipeline_examples",
    "results_of",
    "run_property",
    "run_props",
    "run_props_inprocess",
    "simulate",
    "simulate_check",
    "switch_examples",
    "tensor_parallel_experts",
]
