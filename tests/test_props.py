"""The shard/unshard properties: they hold for mlx's helpers, each one fails on a
deliberately wrong shard, the rank simulator behaves like real ranks, and the same
properties pass on real ranks through mlx.launch."""

from __future__ import annotations

from dataclasses import asdict, replace

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx.nn.layers.distributed import ShardedToAllLinear, shard_inplace, shard_linear

from harness import props
from harness.props import (
    PROPERTIES,
    Property,
    SimGroup,
    check_all_to_sharded,
    check_attention_heads,
    check_fused_segments,
    check_pipeline,
    check_shard_unshard,
    check_sharded_to_all,
    check_switch_block,
    mlx_shard_linear,
    run_property,
    simulate,
    simulate_check,
)
from harness.run import protocol

# Wrong shards are detected on every example with at least two ranks (one rank has
# nothing to scramble), so a handful of examples per broken sharding is enough.
MULTI = st.integers(2, props.MAX_SIMULATED_RANKS)
SUMMED = "all-summed shards vs numpy"
few = settings(
    max_examples=5,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: p.name)
def test_property_holds_for_mlx_helpers(prop: Property):
    result = run_property(prop, max_examples=12)
    assert result.passed, result.detail
    assert result.examples >= 12


def must_fail(check, example, caught_by: str, **broken) -> None:
    """The check fails, and for the right reason: `caught_by` matches its message."""
    with pytest.raises(AssertionError, match=caught_by):
        simulate_check(check, example, **broken)


class Shifted(SimGroup):
    """A group that tells the sharding helpers rank r+1: every rank takes its neighbour's
    shard. Collectives still go to the rank that actually runs (it is a SimGroup)."""

    def __init__(self, group):
        super().__init__((group.rank() + 1) % group.size(), group.size())


def scrambled(layer, sharding, segments, group):
    return mlx_shard_linear(layer, sharding, segments, Shifted(group))


def wrong_axis(layer, sharding, segments, group):
    flipped = "sharded-to-all" if sharding == "all-to-sharded" else "all-to-sharded"
    return mlx_shard_linear(layer, flipped, segments, group)


def contiguous(layer, sharding, segments, group):
    return mlx_shard_linear(layer, sharding, 1, group)


class BiasBeforeSum(ShardedToAllLinear):
    """Adds the bias on every rank before the all_sum: the output is off by (N-1) bias."""

    def __call__(self, x):
        return mx.distributed.all_sum(x @ self["weight"].T + self["bias"], group=self.group)


def bias_on_every_rank(layer, sharding, segments, group):
    sharded = mlx_shard_linear(layer, sharding, segments, group)
    sharded.__class__ = BiasBeforeSum
    return sharded


@few
@given(props.linear_examples(MULTI))
def test_scrambled_rank_order_fails_shard_unshard(ex):
    must_fail(check_shard_unshard, ex, "unsharded differs", shard_fn=scrambled)


@few
@given(props.linear_examples(MULTI))
def test_wrong_axis_fails_shard_unshard(ex):
    must_fail(check_shard_unshard, ex, "shard is|sharding raised", shard_fn=wrong_axis)


@few
@given(props.linear_examples(MULTI, shardings=("all-to-sharded",)))
def test_scrambled_rank_order_fails_all_to_sharded(ex):
    must_fail(check_all_to_sharded, ex, "gathered shards vs numpy", shard_fn=scrambled)


@few
@given(props.linear_examples(MULTI, shardings=("sharded-to-all",)))
def test_scrambled_rank_order_fails_sharded_to_all(ex):
    must_fail(check_sharded_to_all, ex, "output vs numpy", shard_fn=scrambled)


@few
@given(
    props.linear_examples(MULTI, shardings=("sharded-to-all",)).map(
        lambda ex: replace(ex, bias=True, quant=None)
    )
)
def test_bias_added_on_every_rank_fails_sharded_to_all(ex):
    must_fail(check_sharded_to_all, ex, "output vs numpy", shard_fn=bias_on_every_rank)


@few
@given(props.linear_examples(MULTI, shardings=("all-to-sharded",), fused=True))
def test_contiguous_split_of_unequal_segments_fails_fused(ex):
    must_fail(check_fused_segments, ex, "other rows than the per-section", shard_fn=contiguous)


@few
@given(props.switch_examples(MULTI))
def test_misaligned_gate_up_and_down_fail_switch(ex):
    must_fail(check_switch_block, ex, SUMMED, shard_fn=props.misaligned_experts)


def experts_on_wrong_axis(block, group):
    """Stacked `[E, out, in]` weights sliced on the expert axis, no routing mask."""
    shard_inplace(block, lambda path, weight: 0, group=group)
    return block


@few
@given(props.switch_examples(MULTI, expert_parallel=True))
def test_expert_axis_slicing_fails_tensor_parallel_switch(ex):
    must_fail(check_switch_block, ex, SUMMED, shard_fn=experts_on_wrong_axis)


def experts_without_mask(block, group):
    """Expert parallel that forgets the routing mask: tokens routed to other ranks'
    experts are computed with this rank's experts too."""
    experts = block.gate_proj.weight.shape[0] // group.size()
    first = group.rank() * experts
    shard_inplace(block, lambda path, weight: 0, group=group)
    return lambda x, indices: block(x, mx.clip(indices - first, 0, experts - 1))


@few
@given(props.switch_examples(MULTI, expert_parallel=True))
def test_missing_routing_mask_fails_expert_parallel(ex):
    must_fail(check_switch_block, ex, SUMMED, shard_fn=experts_without_mask)


def kv_heads_of_neighbour(attn, group):
    """q heads sliced by rank, k/v heads by the next rank: the groups no longer meet."""
    n = group.size()
    attn.q_proj = shard_linear(attn.q_proj, "all-to-sharded", group=group)
    attn.k_proj = shard_linear(attn.k_proj, "all-to-sharded", group=Shifted(group))
    attn.v_proj = shard_linear(attn.v_proj, "all-to-sharded", group=Shifted(group))
    attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)
    attn.n_heads //= n
    attn.n_kv_heads //= n
    return attn


@few
@given(props.attention_examples(MULTI))
def test_kv_heads_of_another_rank_fail_attention(ex):
    must_fail(check_attention_heads, ex, "attention vs numpy", shard_fn=kv_heads_of_neighbour)


def off_by_one(model, group, split):
    """Every rank but the last starts one layer late: a layer is skipped per boundary."""
    rank, size = group.rank(), group.size()
    model.pipeline_rank, model.pipeline_size = rank, size
    model.start_idx = sum(split[rank + 1 :]) + (1 if rank < size - 1 else 0)
    model.end_idx = model.start_idx + split[rank]


@few
@given(props.pipeline_examples(MULTI))
def test_off_by_one_split_fails_pipeline(ex):
    must_fail(check_pipeline, ex, "pipelined output differs", pipeline_fn=off_by_one)


# The simulator must behave like real ranks: collectives in rank order, send/recv paired,
# a deadlock or a mismatched collective reported instead of hanging.


def test_simulated_collectives_match_their_definitions():
    def spmd(group):
        r = group.rank()
        total = mx.distributed.all_sum(mx.array([r + 1.0]), group=group)
        stacked = mx.distributed.all_gather(mx.array([[r, r]]), group=group)
        if r > 0:
            mx.distributed.send(mx.array([10 * r]), r - 1, group=group)
        got = mx.distributed.recv_like(mx.array([0]), r + 1, group=group) if r < 2 else None
        return total.item(), np.array(stacked).tolist(), None if got is None else got.item()

    results = simulate(spmd, 3)
    assert [r[0] for r in results] == [6.0] * 3
    assert results[0][1] == [[0, 0], [1, 1], [2, 2]]
    assert [r[2] for r in results] == [10, 20, None]


def test_simulation_reports_a_deadlock():
    def spmd(group):
        if group.rank() == 1:
            mx.distributed.recv_like(mx.array([0]), 0, group=group)

    with pytest.raises(AssertionError, match="deadlock: rank 1 waits in recv from rank 0"):
        simulate(spmd, 2)


def test_simulation_reports_mismatched_collectives():
    def spmd(group):
        mx.distributed.all_sum(mx.zeros((group.rank() + 1,)), group=group)

    with pytest.raises(AssertionError, match="ranks disagree on collective #0"):
        simulate(spmd, 2)


def test_simulation_restores_the_real_functions():
    real = mx.distributed.all_sum
    with pytest.raises(ZeroDivisionError):
        simulate(lambda group: 1 / 0, 2)
    assert mx.distributed.all_sum is real
    assert mx.distributed.init().size() == 1


def test_failed_property_reports_its_example():
    def never(example, group):
        raise AssertionError(f"broken on {group.size()} ranks")

    prop = Property("never", "always fails", lambda ranks: ranks.map(lambda n: n), never)
    result = run_property(
        prop, max_examples=5, ranks=st.integers(2, 4), execute=lambda c, n: c(n, SimGroup(0, n))
    )
    assert not result.passed
    assert result.detail == "AssertionError: broken on 2 ranks [example: 2]"


def test_one_rank_runs_in_process():
    report = props.run_props(1, max_examples=1)
    assert report.ok, report
    assert report.simulated
    assert [r.name for r in report.results] == [p.name for p in PROPERTIES]


@pytest.mark.multirank
def test_properties_hold_on_two_real_ranks():
    report = props.run_props(2, max_examples=4, timeout=240)
    failed = [f"{r.name}: {r.detail}" for r in report.results if not r.passed]
    assert report.ok, report.error or "\n".join(failed)


def test_results_of_an_interrupted_job():
    first, second = PROPERTIES[0].name, PROPERTIES[1].name
    done = props.PropertyResult(first, True, 3, None, 0.5)
    events = [
        protocol.Start("property", name=first),
        protocol.Property(asdict(done)),
        protocol.Start("property", name=second),
    ]
    results = props.results_of(events, "launch exited with code 1\nrank 1 exited with code 1")
    assert results[0] == done
    assert results[1].detail == "interrupted: launch exited with code 1"
    assert results[2].detail == "not run: launch exited with code 1"
    assert [r.name for r in results] == [p.name for p in PROPERTIES]


@pytest.mark.multirank
def test_a_launch_past_its_timeout_becomes_a_failed_report():
    # No rank says hello within 50 ms of its launch: Python alone takes longer to start.
    report = props.run_props(2, max_examples=4, timeout=0.05)
    assert not report.ok
    assert report.error.startswith("timed out after 0.05s")
    assert all(not r.passed for r in report.results)


def test_props_command_prints_every_property(run_cli):
    result = run_cli("props", "--ranks", "1", "--max-examples", "3")
    assert result.code == 0, result.out + result.err
    for prop in PROPERTIES:
        assert prop.name in result.out
    summary = result.out.strip().splitlines()[-1]
    assert summary.startswith(f"{len(PROPERTIES)} properties: {len(PROPERTIES)} passed, 0 failed")


def test_props_command_takes_its_rank_count_from_a_hostfile_that_agrees(
    run_cli, tmp_path, assert_one_line_error
):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}]')
    result = run_cli("props", "--ranks", "3", "--hostfile", str(hostfile))
    assert_one_line_error(result, "--ranks 3 disagrees with the 2 hosts")
    result = run_cli("props", "--timeout", "0")
    assert_one_line_error(result, "--timeout must be positive, got 0")


def test_props_command_rejects_zero_ranks(run_cli):
    result = run_cli("props", "--ranks", "0")
    assert result.code == 2
    assert result.err.strip().splitlines() == ["error: --ranks must be at least 1, got 0"]
