"""Preflight rules, each grounded in a real, unguarded mlx-lm sharded run.

Every rule has a case that breaks it; the multirank tests run each such case through
mlx-lm's own `shard()` / `pipeline()` and forward on real ranks (one `mlx.launch` per rank
count) and assert that it really fails: an exception, shards that do not tile the
original weights, or logits that differ from the unsharded model. Control cases (empty
`expected`) must run correctly, which grounds the exemptions (repeated KV heads, tied
embeddings, layers that do not exist, widths that quantization leaves alone).

Run as a script, this file is the rank-side worker of those launches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import preflight
from harness.errors import HarnessError
from harness.models.mlx_lm_api import model_classes
from harness.run.parent.target import Target, launch_argv
from harness.zoo import ARCHS, config_copy, support

REPO = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT_S = 240  # generous: the shared 2-core machine can be heavily loaded
TOLERANCE = 1e-3  # fp32 and q4 tensor-parallel logits differ by ~1e-6 here
PROMPT = [[1, 17, 42, 99, 7, 250, 31, 64]]


@dataclass(frozen=True)
class Grounding:
    name: str
    arch: str
    overrides: dict = field(default_factory=dict)
    expected: frozenset[str] = frozenset()  # rule ids preflight reports; empty: runs fine
    strategy: str = "tp"
    ranks: int = 2
    quant: int | None = None
    group_size: int = 32

    def config(self) -> dict:
        config = config_copy(ARCHS[self.arch])
        for key, value in self.overrides.items():
            *parents, leaf = key.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = value
        return config

    def check(self) -> list[preflight.Violation]:
        return preflight.check(
            self.config(), self.strategy, self.ranks, self.quant, self.group_size
        )


def _g(name, arch, expected=(), **kwargs) -> Grounding:
    return Grounding(name, arch, expected=frozenset(expected), **kwargs)


GROUNDINGS = (
    # ---- controls: satisfy every rule and run correctly ----
    _g("llama", "llama"),
    _g("qwen3_5 kv 1 repeated", "qwen3_5", overrides={"num_key_value_heads": 1}),
    _g(
        "qwen3_moe all-sparse ignores intermediate_size",
        "qwen3_moe",
        overrides={"mlp_only_layers": [], "intermediate_size": 255},
    ),
    _g(
        "qwen3_5 tied vocab not sharded",
        "qwen3_5",
        overrides={"tie_word_embeddings": True, "vocab_size": 255},
    ),
    _g(
        "llama q4 down_proj 96 left unquantized",
        "llama",
        overrides={"intermediate_size": 96},
        quant=4,
        group_size=64,
    ),
    _g("qwen3_moe pp", "qwen3_moe", strategy="pp"),
    # ---- tensor parallel ----
    _g("mla heads", "deepseek_v3", {"heads_divisible"}, overrides={"num_attention_heads": 3}),
    _g("kv below ranks", "llama", {"kv_heads_divisible"}, overrides={"num_key_value_heads": 1}),
    _g(
        "qwen3_moe odd kv",
        "qwen3_moe",
        {"kv_heads_divisible"},
        overrides={"num_attention_heads": 6, "num_key_value_heads": 3},
    ),
    _g(
        "gpt_oss odd kv",
        "gpt_oss",
        {"kv_heads_divisible"},
        overrides={"num_attention_heads": 6, "num_key_value_heads": 3},
    ),
    _g(
        "qwen3_5 kv neither divides nor repeats",
        "qwen3_5",
        {"kv_heads_repeatable"},
        overrides={"num_attention_heads": 6, "num_key_value_heads": 3},
    ),
    _g(
        "qwen3_5 linear key heads",
        "qwen3_5",
        {"linear_key_heads_divisible"},
        overrides={"linear_num_key_heads": 3, "linear_num_value_heads": 6},
    ),
    _g(
        "qwen3_5 linear value heads",
        "qwen3_5",
        {"linear_key_heads_divisible", "linear_value_heads_divisible"},
        overrides={"linear_num_key_heads": 1, "linear_num_value_heads": 3},
    ),
    _g(
        "step3p5 sliding kv",
        "step3p5",
        {"kv_heads_divisible"},
        overrides={
            "attention_other_setting": {"num_attention_heads": 6, "num_attention_groups": 3}
        },
    ),
    _g(
        "minimax_m3 index heads",
        "minimax_m3_vl",
        {"index_heads_divisible"},
        overrides={"text_config.index_n_heads": 3},
    ),
    _g(
        "kimi_k3 linear heads",
        "kimi_k3",
        {"linear_heads_divisible"},
        overrides={"linear_attn_config.num_heads": 3},
    ),
    _g("v41 o_groups", "deepseek_v41", {"o_groups_divisible"}, overrides={"o_groups": 1}),
    _g("qwen3_5 vocab", "qwen3_5", {"vocab_divisible"}, overrides={"vocab_size": 255}),
    _g(
        "muse_spark vocab",
        "muse_spark",
        {"vocab_divisible"},
        overrides={"text_config.vocab_size": 255},
    ),
    _g(
        "llama intermediate",
        "llama",
        {"intermediate_divisible"},
        overrides={"intermediate_size": 255},
    ),
    _g(
        "longcat dense ffn",
        "longcat_flash",
        {"intermediate_divisible"},
        overrides={"ffn_hidden_size": 255},
    ),
    _g(
        "qwen3_moe experts",
        "qwen3_moe",
        {"moe_intermediate_divisible"},
        overrides={"moe_intermediate_size": 127},
    ),
    _g(
        "muse_spark experts truncated silently",
        "muse_spark",
        {"moe_intermediate_divisible"},
        overrides={"text_config.moe_intermediate_size": 127},
    ),
    _g(
        "qwen3_5_moe shared expert",
        "qwen3_5_moe",
        {"shared_intermediate_divisible"},
        overrides={"shared_expert_intermediate_size": 127},
    ),
    _g(
        "step3p5 shared expert",
        "step3p5",
        {"shared_intermediate_divisible"},
        overrides={"share_expert_dim": 127},
    ),
    _g("q4 o_proj", "llama", {"o_proj_quant_groups"}, quant=4, group_size=128),
    _g(
        "q4 expert down_proj",
        "qwen3_moe",
        {"down_proj_quant_groups"},
        overrides={"moe_intermediate_size": 64},
        quant=4,
        group_size=64,
    ),
    _g(
        "q4 linear out_proj",
        "qwen3_5",
        {"out_proj_quant_groups"},
        overrides={"head_dim": 32},
        quant=4,
        group_size=128,
    ),
    _g(
        "q4 v41 o_b_proj",
        "deepseek_v41",
        {"o_b_proj_quant_groups"},
        overrides={"moe_intermediate_size": 256},
        quant=4,
        group_size=128,
    ),
    _g("tp unsupported", "qwen3_next", {"tp_supported"}),
    # ---- pipeline parallel ----
    _g(
        "pp layers",
        "qwen3_moe",
        {"layers_at_least_ranks"},
        overrides={"num_hidden_layers": 1},
        strategy="pp",
    ),
    _g(
        "pp bailing layer groups",
        "bailing_hybrid",
        {"layer_groups_at_least_ranks"},
        overrides={"num_hidden_layers": 2},
        strategy="pp",
    ),
    _g("pp unsupported", "llama", {"pp_supported"}, strategy="pp"),
    # ---- four ranks ----
    _g("llama 4", "llama", ranks=4),
    _g("qwen3_5 kv 2 repeated", "qwen3_5", overrides={"num_key_value_heads": 2}, ranks=4),
    _g(
        "kv 2 on 4",
        "llama",
        {"kv_heads_divisible"},
        overrides={"num_key_value_heads": 2},
        ranks=4,
    ),
    # qwen2 ignores head_dim: o_proj reads hidden_size (64) features, 16 per rank.
    _g(
        "qwen2 q4 o_proj is hidden_size wide",
        "qwen2",
        {"o_proj_quant_groups"},
        overrides={"hidden_size": 64},
        ranks=4,
        quant=4,
    ),
    _g(
        "q4 down_proj 64 on 4",
        "llama",
        {"down_proj_quant_groups"},
        overrides={"intermediate_size": 64},
        ranks=4,
        quant=4,
    ),
    _g(
        "pp 3 layers on 4",
        "qwen3_moe",
        {"layers_at_least_ranks"},
        overrides={"num_hidden_layers": 3},
        strategy="pp",
        ranks=4,
    ),
    # kimi_k3's pipeline() gives a rank no layers and still runs correctly: no rule.
    _g(
        "kimi_k3 pp 3 layers on 4",
        "kimi_k3",
        overrides={"num_hidden_layers": 3},
        strategy="pp",
        ranks=4,
    ),
)


@pytest.mark.parametrize("grounding", GROUNDINGS, ids=lambda g: g.name)
def test_preflight_reports_exactly_the_broken_rules(grounding):
    assert {v.rule for v in grounding.check()} == grounding.expected


# ---- the multirank grounding ----


def _launch(ranks: int, tmp_path: Path) -> dict[str, dict]:
    cases = [g for g in GROUNDINGS if g.ranks == ranks]
    cases_file, results_file = tmp_path / "cases.json", tmp_path / "results.json"
    cases_file.write_text(
        json.dumps(
            [
                {
                    "name": g.name,
                    "config": g.config(),
                    "strategy": g.strategy,
                    "quant": g.quant,
                    "group_size": g.group_size,
                }
                for g in cases
            ]
        )
    )
    argv = launch_argv(Target(ranks), [__file__, str(cases_file), str(results_file)], "grounding")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    # The worker rewrites the file after every case, so a hang still names its case.
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    missing = [g.name for g in cases if g.name not in results]
    assert not missing, f"rank job died or hung before {missing[0]!r}:\n{output[-3000:]}"
    return results


def _assert_grounded(results: dict[str, dict]) -> None:
    wrong = {}
    for g in GROUNDINGS:
        if g.name in results and results[g.name]["failed"] != bool(g.expected):
            wrong[g.name] = results[g.name]
    assert not wrong, json.dumps(wrong, indent=1)


@pytest.mark.multirank
def test_violations_fail_unguarded_on_2_ranks(tmp_path):
    _assert_grounded(_launch(2, tmp_path))


@pytest.mark.multirank
def test_violations_fail_unguarded_on_4_ranks(tmp_path):
    _assert_grounded(_launch(4, tmp_path))


# ---- the zoo, real-checkpoint configs and the message ----


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_zoo_configs_are_accepted_at_1_2_4_ranks(name):
    offered = support(name)
    for strategy in ("tp", "pp"):
        if not getattr(offered, strategy):
            continue
        for ranks in (1, 2, 4):
            for quant in (None, 4):
                config = config_copy(ARCHS[name])
                found = [v.message for v in preflight.check(config, strategy, ranks, quant)]
                assert found == [], (strategy, ranks, quant)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_quantized_widths_are_real_layer_inputs(name):
    """Each quantization rule's width is the input width of a layer of the built model."""
    config = config_copy(ARCHS[name])
    model_cls, args_cls = model_classes(config)
    module = model_cls.__module__.rsplit(".", 1)[-1]
    model = model_cls(args_cls.from_dict(config_copy(ARCHS[name])))
    widths: dict[str, set[int]] = {}
    for path, layer in model.named_modules():
        weight = getattr(layer, "weight", None)
        if weight is not None and weight.ndim >= 2:
            widths.setdefault(path.rsplit(".", 1)[-1], set()).add(weight.shape[-1])
    text = preflight._text_args(args_cls.from_dict(config_copy(ARCHS[name])), module)
    params = preflight._Params(text)
    for rule in preflight.TP_RULES.get(module, ()):
        if isinstance(rule, preflight.QuantGroups) and (rule.when is None or rule.when(text)):
            assert params.value(rule.parameter) in widths[rule.layer], rule


def test_violation_names_parameter_value_ranks_and_what_works():
    config = config_copy(ARCHS["llama"])
    violations = preflight.check(config, "tp", 3)
    heads, kv, mlp = violations
    assert heads == preflight.Violation(
        "heads_divisible", "num_attention_heads", 8, 3, 8, heads.message
    )
    assert (kv.rule, kv.parameter, kv.value, kv.max_ranks) == (
        "kv_heads_divisible",
        "num_key_value_heads",
        4,
        4,
    )
    assert (mlp.rule, mlp.parameter, mlp.value, mlp.max_ranks) == (
        "intermediate_divisible",
        "intermediate_size",
        256,
        64,
    )
    assert kv.message == (
        "tensor parallel over 3 ranks needs num_key_value_heads (4) to be divisible by 3, "
        "since every rank holds an equal share of the KV heads; the largest rank count "
        "that works for it is 4."
    )
    for v in violations:
        assert f"{v.parameter} ({v.value})" in v.message
        assert f"over {v.ranks} ranks" in v.message
        assert v.message.endswith(f"the largest rank count that works for it is {v.max_ranks}.")
        assert "\n" not in v.message
    with pytest.raises(HarnessError) as error:
        preflight.require(config, "tp", 3)
    assert str(error.value) == heads.message
    preflight.require(config, "tp", 4)


def test_max_ranks_per_rule_kind():
    config = config_copy(ARCHS["qwen3_moe"])
    config.update(num_hidden_layers=3, mlp_only_layers=[], moe_intermediate_size=96)
    (down,) = preflight.check(config, "tp", 4, quant=4, group_size=32)
    # 96 = 3 groups of 32: only 1 or 3 ranks keep whole groups.
    assert (down.rule, down.max_ranks) == ("down_proj_quant_groups", 3)
    (layers,) = preflight.check(config, "pp", 4)
    assert (layers.rule, layers.max_ranks) == ("layers_at_least_ranks", 3)
    qwen3_5 = config_copy(ARCHS["qwen3_5"]) | {"num_attention_heads": 6, "num_key_value_heads": 3}
    (kv,) = preflight.check(qwen3_5, "tp", 2)
    assert (kv.rule, kv.max_ranks) == ("kv_heads_repeatable", 63)  # 3 heads repeated 21x


def test_nothing_to_check():
    broken = {"model_type": "llama", "num_attention_heads": 3}
    assert preflight.check(broken, "tp", 1) == []
    assert preflight.check(broken, "none", 4) == []
    assert preflight.check(broken, "my_pkg.shard:tp", 4) == []
    with pytest.raises(HarnessError):
        preflight.check(broken, "tp", 0)


def test_unknown_model_type_is_a_violation():
    (violation,) = preflight.check({"model_type": "no_such_model"}, "tp", 2)
    assert (violation.rule, violation.value, violation.max_ranks) == (
        "tp_supported",
        "no_such_model",
        1,
    )


# Shaped like real checkpoints' config.json files (sizes of the published models).
QWEN3_5_MOE_CHECKPOINT = {
    "architectures": ["Qwen3_5MoeForConditionalGeneration"],
    "model_type": "qwen3_5_moe",
    "quantization": {"group_size": 64, "bits": 4, "mode": "affine"},
    "text_config": {
        "model_type": "qwen3_5_moe_text",
        "hidden_size": 4096,
        "num_hidden_layers": 60,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 64,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "full_attention_interval": 4,
        "num_experts": 512,
        "num_experts_per_tok": 10,
        "moe_intermediate_size": 1024,
        "shared_expert_intermediate_size": 1024,
        "vocab_size": 248320,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
    },
    "vision_config": {"depth": 27, "hidden_size": 1152},
}
DEEPSEEK_V3_CHECKPOINT = {
    "model_type": "deepseek_v3",
    "quantization": {"group_size": 64, "bits": 4},
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "first_k_dense_replace": 3,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
}
KIMI_K25_CHECKPOINT = {
    "model_type": "kimi_k25",
    "text_config": {**DEEPSEEK_V3_CHECKPOINT, "model_type": "kimi_k2", "num_attention_heads": 64},
    "vision_config": {"hidden_size": 1152},
}


def _rules(config, strategy, ranks, quant=None):
    return {(v.rule, v.parameter) for v in preflight.check(config, strategy, ranks, quant)}


def test_real_checkpoint_configs():
    qwen = QWEN3_5_MOE_CHECKPOINT
    # 2 KV heads are repeated on 8 or 16 ranks; everything else divides.
    assert _rules(qwen, "tp", 8) == set()
    assert _rules(qwen, "tp", 16) == set()
    # 32 ranks: 16 linear key heads do not split, and the checkpoint's own 4-bit groups
    # of 64 no longer fit the 1024-wide experts (32 columns per rank).
    assert _rules(qwen, "tp", 32) == {
        ("linear_key_heads_divisible", "linear_num_key_heads"),
        ("down_proj_quant_groups", "moe_intermediate_size"),
        ("down_proj_quant_groups", "shared_expert_intermediate_size"),
    }
    assert _rules(qwen, "tp", 3) >= {("heads_divisible", "num_attention_heads")}
    assert _rules(qwen, "pp", 64) == {("layers_at_least_ranks", "num_hidden_layers")}
    assert QWEN3_5_MOE_CHECKPOINT["text_config"]["num_key_value_heads"] == 2  # not mutated

    assert _rules(DEEPSEEK_V3_CHECKPOINT, "tp", 16) == set()
    # 128 heads / 48 ranks; 2048 / 48 is not whole either; 18432 = 48 * 384 is. Where a
    # split is not whole, its quantization groups are not reported on top.
    assert _rules(DEEPSEEK_V3_CHECKPOINT, "tp", 48) == {
        ("heads_divisible", "num_attention_heads"),
        ("moe_intermediate_divisible", "moe_intermediate_size"),
        ("shared_intermediate_divisible", "n_shared_experts*moe_intermediate_size"),
    }
    # Read from the nested text_config.
    assert _rules(KIMI_K25_CHECKPOINT, "tp", 32) == set()
    (heads,) = preflight.check(KIMI_K25_CHECKPOINT, "tp", 128, quant=None)
    assert (heads.parameter, heads.value, heads.max_ranks) == ("num_attention_heads", 64, 64)


# ---- rank-side worker (run by mlx.launch) ----


def _build(case: dict):
    import mlx.core as mx
    from mlx_lm.utils import quantize_model

    mx.random.seed(0)  # the same random weights on every rank
    model_cls, args_cls = model_classes(case["config"])
    model = model_cls(args_cls.from_dict(json.loads(json.dumps(case["config"]))))
    if case["quant"]:
        quantize_model(model, {}, case["group_size"], case["quant"])
    mx.eval(model.parameters())
    return model


def _shapes(model) -> dict[str, tuple[int, ...]]:
    from mlx.utils import tree_flatten

    return {k: v.shape for k, v in tree_flatten(model.parameters())}


def _untiled(before: dict, after: dict, ranks: int) -> list[str]:
    """Shards that cannot tile the original: not an equal split (nor a repeat) of it."""
    bad = []
    for key, old in before.items():
        new = after.get(key)
        if new is None or len(new) != len(old):
            continue
        for axis, (o, n) in enumerate(zip(old, new, strict=True)):
            if n != o and (n == 0 or o % n or n * ranks < o):
                bad.append(f"{key} axis {axis}: {o} -> {n}")
    return bad


def _run_case(case: dict, group) -> dict:
    import mlx.core as mx
    import numpy as np

    result = {"shard_error": None, "untiled": [], "forward_error": None, "max_diff": None}
    model = _build(case)
    before = _shapes(model)
    try:
        if case["strategy"] == "tp":
            model.shard(group)
        else:
            model.model.pipeline(group)
        mx.eval(model.parameters())
    except Exception as error:
        result["shard_error"] = f"{type(error).__name__}: {error}"
        return result
    if case["strategy"] == "tp":
        result["untiled"] = _untiled(before, _shapes(model), group.size())[:3]
    try:
        out = model(mx.array(PROMPT))
        mx.eval(out)
    except Exception as error:
        result["forward_error"] = f"{type(error).__name__}: {error}"
        return result
    ref = _build(case)(mx.array(PROMPT))
    if out.shape != ref.shape:
        result["forward_error"] = f"logits shape {out.shape} != {ref.shape}"
    else:
        result["max_diff"] = float(np.max(np.abs(np.array(out) - np.array(ref))))
    return result


def _failed(result: dict) -> bool:
    # muse_spark's attention is a Metal kernel: its forward cannot run on CPU at all.
    forward = result["forward_error"] and "No Metal back-end" not in result["forward_error"]
    return bool(
        result["shard_error"]
        or result["untiled"]
        or forward
        or (result["max_diff"] is not None and not result["max_diff"] <= TOLERANCE)
    )


def _worker(cases_file: str, results_file: str) -> None:
    import mlx.core as mx

    group = mx.distributed.init()
    results = {}
    for case in json.loads(Path(cases_file).read_text()):
        result = _run_case(case, group)
        results[case["name"]] = {**result, "failed": _failed(result)}
        # Every rank finishes the case before the next: a stuck rank hangs here, visibly.
        mx.eval(mx.distributed.all_sum(mx.array(1.0)))
        if group.rank() == 0:
            Path(results_file).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    _worker(*[arg for arg in sys.argv[1:] if arg != "--"])
