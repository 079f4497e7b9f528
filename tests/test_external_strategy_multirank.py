"""An architecture without mlx-lm's shard(): its built-in tensor parallel is skipped with
the reason, and a user's own tensor parallel for it runs on real ranks against the
single-rank reference, at every shape."""

import textwrap

import pytest

from harness.records import store

pytestmark = pytest.mark.multirank

# A user's tensor parallel for mixtral, written the way mlx-lm shards qwen3_moe: heads and
# each expert's intermediate dimension split across ranks, one all_sum per block.
MIXTRAL_TP = textwrap.dedent(
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.nn.layers.distributed import shard_inplace, shard_linear


    class SummedMoe(nn.Module):
        def __init__(self, block, group):
            super().__init__()
            self.block = block
            self.group = group

        def __call__(self, x):
            return mx.distributed.all_sum(self.block(x), group=self.group)


    def shard(model, group):
        N = group.size()
        for layer in model.model.layers:
            attn = layer.self_attn
            for name in ("q_proj", "k_proj", "v_proj"):
                sharded = shard_linear(getattr(attn, name), "all-to-sharded", group=group)
                setattr(attn, name, sharded)
            attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)
            attn.num_heads //= N
            attn.num_key_value_heads //= N
            experts = layer.block_sparse_moe.switch_mlp
            shard_inplace(experts.gate_proj, "all-to-sharded", group=group)
            shard_inplace(experts.up_proj, "all-to-sharded", group=group)
            shard_inplace(experts.down_proj, "sharded-to-all", group=group)
            layer.block_sparse_moe = SummedMoe(layer.block_sparse_moe, group)
    """
)


def test_external_tensor_parallel_runs_on_mixtral(run_cli, db_path, tmp_path):
    strategy = tmp_path / "mixtral_tp.py"
    strategy.write_text(MIXTRAL_TP)
    result = run_cli(
        "run", "--arch", "mixtral", "--strategy", f"{strategy}:shard", "--ranks", "2",
        "--shapes", "short", "--shapes", "long-chunked", "--shapes", "mixed",
        "--repeats", "1", "--no-goldens", "--db", db_path,
    )  # fmt: skip
    assert result.code == 0, result.out[-3000:] + result.err
    _, cases = store.get_run(store.open_db(db_path), None)
    assert [(c["status"], c["variant"]) for c in cases] == [
        ("pass", "base"),
        ("pass", "shape=long-chunked"),
        ("pass", "shape=mixed"),
    ]
    assert all(c["first_divergent_layer"] is None for c in cases)


def test_builtin_strategies_on_mixtral_are_skipped_with_the_reason(run_cli, db_path):
    result = run_cli("run", "--arch", "mixtral", "--ranks", "2", "--db", db_path)
    assert result.code == 0, result.out[-3000:] + result.err
    _, cases = store.get_run(store.open_db(db_path), None)
    assert [(c["strategy"], c["status"]) for c in cases] == [("tp", "skip"), ("pp", "skip")]
    assert cases[0]["reason"] == "mixtral has no tensor-parallel shard() in the installed mlx-lm"
    assert cases[1]["reason"] == "mixtral has no pipeline() in the installed mlx-lm"
