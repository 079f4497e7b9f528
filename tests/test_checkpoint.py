"""Checkpoints: every layout loads back through mlx-lm's real load path into exactly the
zoo's weights and logits, single-rank and sharded; key coverage names what a loader
drops; bad checkpoint directories are one sentence and exit 2."""

import json
import shutil
import struct
import tempfile
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

from harness.case import Case
from harness.errors import HarnessError
from harness.models import checkpoint
from harness.models.checkpoint.load import coverage_of, load_checked
from harness.run.parent.plan import RunOptions
from harness.run.parent.session import run

TOKENS = mx.array([[1, 17, 42, 99, 7, 250, 31, 64], [5, 200, 13, 77, 128, 3, 190, 45]])
# (arch, layout, quant): every Hugging Face layout of the families asked for, and the
# quantized mlx layouts.
LAYOUT_CASES = [
    ("qwen3_moe", "hf-per-expert", None),
    ("qwen3_moe", "mlx", None),
    ("qwen3_moe", "mlx-q4", 4),
    ("deepseek_v3", "hf-per-expert", None),
    ("deepseek_v3", "mlx-q8", 8),
    ("gpt_oss", "hf-fused", None),
    ("gpt_oss", "mlx-mxfp4", 4),
    ("glm4_moe", "hf-per-expert", None),
    ("minimax", "hf-per-expert", None),
    ("qwen3_5_moe", "hf-fused", None),
    ("qwen3_next", "hf-per-expert", None),
    ("mistral4", "hf-fused", None),
    ("llama", "hf", None),
]


def assert_one_line_error(result, *fragments):
    assert result.code == 2, (result.code, result.out, result.err)
    lines = [line for line in result.err.strip().splitlines() if line]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err + result.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A pristine qwen3_moe checkpoint per layout; tests copy it before breaking it."""
    root = tmp_path_factory.mktemp("written")
    return {
        layout: checkpoint.write_checkpoint("qwen3_moe", layout, root / layout)
        for layout in ("mlx", "hf-per-expert")
    }


@pytest.fixture
def copy_of(written, tmp_path):
    def copy(layout="mlx"):
        return Path(shutil.copytree(written[layout], tmp_path / f"copy-{layout}"))

    return copy


# ---- layouts ----


def test_layout_registry():
    assert checkpoint.layouts_for("qwen3_moe") == [
        "mlx",
        "mlx-q4",
        "mlx-q8",
        "mlx-mxfp4",
        "hf-per-expert",
    ]
    assert "hf-fused" in checkpoint.layouts_for("gpt_oss")
    assert {"hf-per-expert", "hf-fused"} <= set(checkpoint.layouts_for("mistral4"))
    assert "hf" in checkpoint.layouts_for("llama")
    with pytest.raises(HarnessError, match="unknown layout 'hf-stacked'; known: mlx, mlx-q4"):
        checkpoint.get_layout("hf-stacked")
    with pytest.raises(HarnessError, match="'llama' has no 'hf-per-expert' layout"):
        checkpoint.write_checkpoint("llama", "hf-per-expert", Path("/nonexistent/x"))
    with pytest.raises(HarnessError, match="give the case precision 'q4'"):
        checkpoint.skip_reason(Case("qwen3_moe", layout="mlx-q4"))
    with pytest.raises(HarnessError, match="holds 4-bit weights, not 8-bit"):
        checkpoint.write_checkpoint("qwen3_moe", "mlx-q4", Path("/nonexistent/x"), quant=8)


def test_files_are_a_real_checkpoint(written):
    path = written["hf-per-expert"]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in index["weight_map"]
    # Split by layer, so a pipeline stage reads its own shard.
    assert index["weight_map"]["model.layers.0.mlp.gate_proj.weight"] == shards[0]
    assert index["weight_map"]["model.layers.3.mlp.gate.weight"] == shards[1]
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(path)
    ids = tokenizer.encode("Hello, world")
    assert tokenizer.decode(ids) == "Hello, world"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert max(chat) < 256 and tokenizer.eos_token_id == 2


@pytest.mark.parametrize(("arch", "layout", "quant"), LAYOUT_CASES)
def test_layout_loads_into_the_zoo_logits(arch, layout, quant):
    reference, _ = checkpoint.source_model(arch, layout, quant=quant)
    loaded = checkpoint.load_for_case(Case(arch, layout=layout, quant=quant), None)
    assert mx.array_equal(loaded(TOKENS), reference(TOKENS)).item()


@settings(max_examples=8)
@given(case=st.sampled_from(LAYOUT_CASES), seed=st.integers(0, 2**16))
def test_sanitize_gives_back_exactly_the_generated_weights(case, seed):
    arch, layout, quant = case
    source, _ = checkpoint.source_model(arch, layout, seed, quant)
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint.write_checkpoint(arch, layout, Path(tmp) / "ckpt", seed, quant)
        model, coverage = load_checked(path)
        expected = dict(tree_flatten(source.parameters()))
        got = dict(tree_flatten(model.parameters()))
        assert coverage.ok
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert mx.array_equal(got[key], value).item(), key


def test_tp_and_pp_go_through_sharded_load(monkeypatch):
    import mlx_lm.utils

    from harness.run.rank import one_case

    calls = []
    real = mlx_lm.utils.sharded_load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlx_lm.utils, "sharded_load", spy)
    group = mx.distributed.init()
    for strategy in ("tp", "pp"):
        monkeypatch.setattr(one_case, "resolve", None)  # the strategy must not run again
        one_case.run_case(Case("deepseek_v3", strategy, layout="hf-per-expert"), group, repeats=0)
    assert [set(c) for c in calls] == [
        {"tensor_group", "tokenizer_config"},
        {"pipeline_group", "tokenizer_config"},
    ]
    assert all(c["tokenizer_config"] == {"trust_remote_code": False} for c in calls)


def test_single_file_checkpoint_is_sharded_without_an_index(copy_of, monkeypatch):
    import mlx_lm.utils

    from harness.run.rank import one_case

    path = copy_of()
    merged = {}
    for shard in sorted(path.glob("model-*.safetensors")):
        merged.update(mx.load(str(shard)))
    mx.eval(merged)
    for shard in path.glob("model-*.safetensors"):
        shard.unlink()
    (path / "model.safetensors.index.json").unlink()
    mx.save_safetensors(str(path / "model.safetensors"), merged)
    monkeypatch.setattr(mlx_lm.utils, "sharded_load", None)  # needs the index: not used
    case = Case("qwen3_moe", "pp", checkpoint=str(path), decode_steps=1)
    output, _ = one_case.run_case(case, mx.distributed.init(), capture=False, repeats=0)
    reference, _ = one_case.run_case(Case("qwen3_moe", "pp", decode_steps=1), None, repeats=0)
    assert (output.prefill == reference.prefill).all()


@pytest.mark.multirank
def test_layouts_give_identical_logits_sharded_in_one_launch():
    groups = {
        ("qwen3_moe", "tp"): [None, "hf-per-expert"],
        ("qwen3_moe", "pp"): [None, "hf-per-expert"],
        ("deepseek_v3", "tp"): [None, "hf-per-expert"],
        ("gpt_oss", "tp"): ["hf-fused"],
        ("minimax", "tp"): [None, "hf-per-expert"],
        ("glm4_moe", "pp"): ["hf-per-expert"],
    }
    cases = [
        Case(arch, strategy, layout=layout, decode_steps=2)
        for (arch, strategy), layouts in groups.items()
        for layout in layouts
    ]
    results = list(run(cases, RunOptions(ranks=2, repeats=1, capture=False, goldens=None)))
    assert all(r.status == "pass" for r in results), [(r.case.label(), r.reason) for r in results]
    worst = {}
    for r in results:
        assert set(r.comparisons) == {0, 1}
        worst.setdefault((r.case.arch, r.case.strategy), set()).add(r.worst.metrics.max_abs)
    # Bit-identical weights: every layout's sharded logits differ from its reference alike.
    assert all(len(diffs) == 1 for diffs in worst.values()), worst
    assert worst["qwen3_moe", "pp"] == {0.0}


# ---- coverage: what a strict=False load would silently drop ----


def _rewrite_shard(path: Path, name: str, edit) -> None:
    """Apply `edit` to one shard's tensors and keep the index in step."""
    file = path / name
    tensors = edit(dict(mx.load(str(file))))
    mx.save_safetensors(str(file), tensors, metadata={"format": "mlx"})
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != name}
    index["weight_map"].update({k: name for k in tensors})
    index_file.write_text(json.dumps(index))


SHARD2 = "model-00002-of-00002.safetensors"


def test_dropped_and_missing_keys_are_named(copy_of, run_cli):
    path = copy_of()

    def edit(tensors):
        tensors["model.layers.3.mlp.shared_expert.weight"] = mx.zeros((4,))
        del tensors["model.norm.weight"]
        return tensors

    _rewrite_shard(path, SHARD2, edit)
    coverage = checkpoint.check_checkpoint(str(path))
    assert coverage.dropped == ["model.layers.3.mlp.shared_expert.weight"]
    assert coverage.missing == ["model.norm.weight"]
    result = run_cli("checkpoint", "check", str(path))
    assert result.code == 1
    assert (
        "1 checkpoint key(s) dropped (not consumed by the model): "
        "model.layers.3.mlp.shared_expert.weight" in result.out
    )
    assert (
        "1 model parameter(s) missing from the checkpoint (left at random init): "
        "model.norm.weight" in result.out
    )
    # The same checkpoint in a run: the case errors with the keys, nothing silent.
    results = list(run([Case("qwen3_moe", "tp", checkpoint=str(path))], RunOptions(repeats=1)))
    assert results[0].status == "error"
    assert "model.layers.3.mlp.shared_expert.weight" in results[0].reason


def test_shape_mismatch_and_sanitize_key_error_are_named(copy_of):
    path = copy_of("hf-per-expert")
    _rewrite_shard(path, SHARD2, lambda t: {**t, "model.norm.weight": mx.ones((32,))})
    coverage = checkpoint.check_checkpoint(str(path))
    assert coverage.mismatched == ["model.norm.weight checkpoint [32] vs model [64]"]

    def drop_expert(tensors):
        del tensors["model.layers.3.mlp.experts.5.up_proj.weight"]
        return tensors

    _rewrite_shard(path, SHARD2, drop_expert)
    with pytest.raises(HarnessError, match="sanitize\\(\\) needs 'model.layers.3.mlp.experts.5"):
        checkpoint.check_checkpoint(str(path))


def test_transformers_gpt_oss_layout_is_caught_dropping_every_expert(tmp_path):
    # transformers' own (dequantized) gpt-oss keys: experts.gate_up_proj [E, H, 2I]
    # without ".weight". mlx-lm's sanitize renames it to experts.gate_proj, which no
    # parameter has, so a strict=False load keeps random experts without a word.
    from harness.models.checkpoint.write import write_shards

    model, config = checkpoint.source_model("gpt_oss", "mlx")
    params, weights = dict(tree_flatten(model.parameters())), {}
    for key, value in params.items():
        if key.endswith("experts.gate_proj.weight"):
            up = params[key.replace("gate_proj", "up_proj")]
            fused = mx.stack([value, up], axis=-2).reshape(value.shape[0], -1, value.shape[-1])
            weights[key.replace("gate_proj.weight", "gate_up_proj")] = fused.swapaxes(-1, -2)
        elif key.endswith("experts.down_proj.weight"):
            weights[key.removesuffix(".weight")] = value.swapaxes(-1, -2)
        elif not key.endswith("experts.up_proj.weight"):
            weights[key] = value
    write_shards(tmp_path, weights, 2, "pt")
    (tmp_path / "config.json").write_text(json.dumps(config))
    coverage = checkpoint.check_checkpoint(str(tmp_path))
    assert "model.layers.0.mlp.experts.gate_proj" in coverage.dropped
    assert "model.layers.0.mlp.experts.gate_proj.weight" in coverage.missing
    assert len(coverage.missing) == 12  # 3 expert projections x 4 layers


def test_a_good_checkpoint_checks_ok(written, run_cli):
    result = run_cli("checkpoint", "check", str(written["hf-per-expert"]))
    assert result.code == 0
    assert result.out.startswith("ok: ") and "all 50 checkpoint tensors load" in result.out


def test_a_parameter_the_load_did_not_replace_is_named():
    model = nn.Linear(4, 4)
    declared = dict(tree_flatten(model.parameters()))
    weights = {k: mx.zeros(v.shape) for k, v in declared.items()}
    model.load_weights([("weight", weights["weight"])], strict=False)
    coverage = coverage_of(model, declared, weights, SimpleNamespace(path="p", model_type="t"))
    assert coverage.unset == ["bias"] and not coverage.ok
    assert "1 parameter(s) left at their initial value: bias" in coverage.verdict()


# ---- bad input: one sentence, exit 2 ----


def test_truncated_shard_names_the_file(copy_of, run_cli):
    path = copy_of()
    data = (path / SHARD2).read_bytes()
    (path / SHARD2).write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("checkpoint", "check", str(path)), SHARD2, "is truncated")


def test_garbage_shard_is_corrupt(copy_of, run_cli):
    path = copy_of()
    (path / SHARD2).write_bytes(struct.pack("<Q", 10**9) + b"{}")
    assert_one_line_error(run_cli("checkpoint", "check", str(path)), SHARD2, "is corrupt")


def test_index_naming_a_missing_shard(copy_of, run_cli):
    path = copy_of()
    (path / SHARD2).unlink()
    result = run_cli("checkpoint", "check", str(path))
    assert_one_line_error(result, f"names shard '{SHARD2}', which is missing")


def test_unindexed_shard_is_refused(copy_of, run_cli):
    path = copy_of()
    shutil.copy(path / SHARD2, path / "model-00003-of-00003.safetensors")
    result = run_cli("checkpoint", "check", str(path))
    assert_one_line_error(result, "model-00003-of-00003.safetensors", "stale shard")


def test_no_config(tmp_path, run_cli):
    assert_one_line_error(run_cli("checkpoint", "check", str(tmp_path)), "has no config.json")


def test_unknown_model_type(copy_of, run_cli):
    path = copy_of()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen9_moe"}))
    result = run_cli("checkpoint", "check", str(path))
    assert_one_line_error(result, "model_type 'qwen9_moe'", "does not implement")


def test_pickle_only_weights_are_refused_unopened(tmp_path, run_cli):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    result = run_cli("checkpoint", "check", str(tmp_path))
    assert_one_line_error(result, "only pickle weights (pytorch_model.bin)", "refuses to unpickle")


def test_custom_code_is_refused(copy_of, run_cli):
    path = copy_of()
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_file": "modeling_x.py"}))
    result = run_cli("checkpoint", "check", str(path))
    assert_one_line_error(result, "custom model code ('modeling_x.py')", "trust_remote_code is off")
    (path / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    result = run_cli("checkpoint", "check", str(path))
    assert_one_line_error(result, "maps AutoTokenizer to custom code", "trust_remote_code is off")


def test_absent_checkpoint_and_unknown_layout(run_cli, tmp_path):
    result = run_cli("checkpoint", "check", str(tmp_path / "nope"))
    assert_one_line_error(result, "does not exist")
    result = run_cli("checkpoint", "check", "nobody/absent-model")
    assert_one_line_error(result, "not in the local Hugging Face cache", "never downloads")
    out = str(tmp_path / "out")
    result = run_cli(
        "checkpoint", "write", "--arch", "qwen3_moe", "--layout", "fused", "--out", out
    )
    assert_one_line_error(result, "unknown layout 'fused'; known: mlx")


# ---- real checkpoints: local paths, the offline HF cache, skipped when absent ----


def test_real_suite_runs_a_local_checkpoint_and_skips_absent_ones(tmp_path, run_cli, db_path):
    result = run_cli(
        "checkpoint",
        "write",
        "--arch",
        "glm4_moe",
        "--layout",
        "hf-per-expert",
        "--out",
        str(tmp_path / "glm"),
    )
    assert result.code == 0 and "wrote glm4_moe in layout hf-per-expert" in result.out
    suite = tmp_path / "real.toml"
    suite.write_text(
        f'[[case]]\narch = "glm4_moe"\ncheckpoint = "{tmp_path / "glm"}"\nstrategy = "tp"\n'
        '[[case]]\narch = "qwen3_moe"\ncheckpoint = "~/models/absent-model"\n'
        '[[case]]\narch = "qwen3_moe"\ncheckpoint = "nobody/absent-model-4bit"\n'
    )
    result = run_cli("run", "--suite", str(suite), "--db", db_path)
    assert result.code == 0, result.out
    progress = [line.split()[2] for line in result.out.splitlines() if line.startswith("[")]
    assert sorted(progress) == ["pass", "skip", "skip"], result.out
    assert "checkpoint '~/models/absent-model' does not exist" in result.out
    assert "not in the local Hugging Face cache" in result.out


def test_repo_id_resolves_in_the_local_hf_cache(written, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--tiny--qwen3-moe" / "snapshots" / "abc123"
    shutil.copytree(written["mlx"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    case = Case("qwen3_moe", "tp", checkpoint="tiny/qwen3-moe")
    assert checkpoint.skip_reason(case) is None
    assert checkpoint.check_checkpoint("tiny/qwen3-moe").ok


def test_suites_load():
    from harness.suites import load_suite

    real = load_suite("real")
    assert real and all(c.checkpoint for c in real)
    layouts = [c for c in load_suite("moe") if c.layout]
    assert {c.layout for c in layouts} >= {"hf-per-expert", "hf-fused", "mlx-q4"}


# ---- text prompts: the checkpoint's tokenizer and chat template ----


def test_text_prompts_go_through_the_chat_template_left_padded(written):
    from mlx_lm.utils import load_tokenizer

    from harness.models.checkpoint.prompts import tokenize_prompts

    path = written["mlx"]
    ids = tokenize_prompts(path, ["hi", "hello there"])
    assert ids == tokenize_prompts(path, ["hi", "hello there"])  # deterministic
    assert len(ids[0]) == len(ids[1])
    tokenizer = load_tokenizer(path)
    turn = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(list(ids[1])) == turn.format("hello there")
    padding = len("hello there") - len("hi")
    assert ids[0][:padding] == (tokenizer.pad_token_id,) * padding == (0,) * padding
    assert tokenizer.decode(list(ids[0][padding:])) == turn.format("hi")


def test_text_prompts_without_a_chat_template_are_encoded_and_padded_with_eos(copy_of):
    from harness.models.checkpoint.prompts import tokenize_prompts

    path = copy_of()
    config = json.loads((path / "tokenizer_config.json").read_text())
    del config["chat_template"], config["pad_token"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    ids = tokenize_prompts(path, ["hi", "hello there"])
    eos = 2  # <|im_end|>
    assert ids == ((eos,) * 9 + tuple(b"hi"), tuple(b"hello there"))


def test_text_prompt_case_runs_the_tokenized_ids(written):
    from harness.models.checkpoint.prompts import tokenize_prompts
    from harness.run.rank import one_case

    path = str(written["hf-per-expert"])
    texts = ("Why is the sky blue?", "Hi")
    case = Case("qwen3_moe", "none", checkpoint=path, prompt_text=texts, decode_steps=1)
    output, _ = one_case.run_case(case, None, capture=False, repeats=0)
    ids = tokenize_prompts(path, texts)
    assert output.prefill.shape[:2] == (2, len(ids[0]))
    as_ids = Case("qwen3_moe", "none", checkpoint=path, prompts=ids, decode_steps=1)
    expected, _ = one_case.run_case(as_ids, None, capture=False, repeats=0)
    assert (output.prefill == expected.prefill).all()


def test_suite_with_text_prompts_passes(written, tmp_path, run_cli, db_path):
    suite = tmp_path / "text.toml"
    suite.write_text(
        '[defaults]\nprompt_text = ["What is the capital of France?", "Hi"]\n'
        f'[[case]]\narch = "qwen3_moe"\ncheckpoint = "{written["hf-per-expert"]}"\n'
        'strategy = "tp"\n'
        '[[case]]\narch = "deepseek_v3"\nlayout = "hf-per-expert"\nstrategy = "pp"\n'
    )
    result = run_cli("run", "--suite", str(suite), "--ranks", "1", "--db", db_path)
    assert result.code == 0, result.out
    progress = [line.split()[2] for line in result.out.splitlines() if line.startswith("[")]
    assert progress == ["pass", "pass"], result.out


def test_case_keys_without_text_prompts_are_unchanged():
    # Committed goldens' keys: a case without prompt_text keeps its key.
    assert Case("qwen3_moe").key() == "qwen3_moe-fp32-3209b76363d4"
    assert Case("deepseek_v3", layout="hf-per-expert").key() == "deepseek_v3-fp32-40524b1d430e"
    texted = Case("deepseek_v3", layout="hf-per-expert", prompt_text=("Hi",))
    assert texted.key() != "deepseek_v3-fp32-40524b1d430e"
    assert texted.key() != Case("deepseek_v3", layout="hf-per-expert", prompt_text=("Ho",)).key()
    restored = Case.from_dict(json.loads(json.dumps(texted.to_dict())))
    assert restored == texted and restored.key() == texted.key()


def test_text_prompts_on_a_zoo_case_are_one_line(tmp_path, run_cli, db_path):
    suite = tmp_path / "zoo.toml"
    suite.write_text('[[case]]\narch = "qwen3_moe"\nprompt_text = ["Hi"]\n')
    result = run_cli("run", "--suite", str(suite), "--db", db_path)
    assert_one_line_error(result, "case 1: prompt_text needs a checkpoint or layout")
    suite.write_text('[[case]]\narch = "qwen3_moe"\nlayout = "mlx"\nprompt_text = "Hi"\n')
    result = run_cli("run", "--suite", str(suite), "--db", db_path)
    assert_one_line_error(result, "case 1: prompt_text must be a list of strings")
    from harness.suites import load_suite

    assert all(c.prompt_text for c in load_suite("real"))
