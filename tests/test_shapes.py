"""Shapes as part of a case: the profiles, the prefill the way mlx-lm runs it (chunks,
padded batches), the diagnoses that name where a shape breaks, the suites that ask for
shapes, and the summary across shapes."""

import numpy as np
import pytest

from harness.case import DEFAULT_PROMPTS, Case
from harness.errors import HarnessError
from harness.models.build import shape_skip_reason
from harness.paths import SHIPPED_GOLDENS
from harness.records.goldens import paths
from harness.records.ladder import TOLERANCES, compare
from harness.records.outputs import Output
from harness.records.result import CaseResult
from harness.records.shape_summary import shape_summary
from harness.run.rank.one_case import run_case
from harness.shapes import SHAPES, get_shape, tokens
from harness.suites import load_suite, matrix_cases, override_shapes

FP32 = TOLERANCES["fp32"]


def test_short_is_todays_shape_and_keeps_the_committed_golden_keys():
    short = Case("qwen3_moe", **get_shape("short").fields())
    assert short == Case("qwen3_moe") and short.shape == "short"
    assert short.key() == Case("qwen3_moe").key()
    assert paths(short.key(), SHIPPED_GOLDENS)[1].exists(), "a committed golden has this key"
    assert Case("qwen3_moe").variant == "base"


def test_other_shapes_add_to_the_key_and_the_label():
    keys = {Case("qwen3_moe", **s.fields()).key() for s in SHAPES.values()}
    assert len(keys) == len(SHAPES)
    long = Case("qwen3_moe", **get_shape("long-chunked").fields())
    assert long.variant == "shape=long-chunked" and long.prefill_step == 32
    assert Case("qwen3_moe", decode_steps=2).shape == "custom"
    assert Case.from_dict(long.to_dict()) == long


def test_profiles_stay_in_the_zoo_vocabulary_and_reach_their_boundaries():
    for shape in SHAPES.values():
        assert all(0 < t < 256 for p in shape.prompts for t in p), shape.name
    assert get_shape("single-stream").batch == 1
    long = get_shape("long-chunked")
    # A 32-token chunk at top-2 is 64 (token, expert) pairs: SwitchGLU's sorted path.
    assert long.batch == 1 and long.lengths[0] > long.prefill_step >= 32
    assert get_shape("window").lengths[0] + get_shape("window").decode_steps > 4 + 4
    assert len(set(get_shape("mixed").lengths)) == 2
    assert len(set(tokens(200, 0))) == 200


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(HarnessError, match=r"unknown shape 'huge'; known: short, single-stream"):
        get_shape("huge")


def _run(arch: str, **fields) -> Output:
    output, _ = run_case(Case(arch, "none", **fields), None, repeats=0)
    return output


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss", "qwen3_next"])
def test_chunked_prefill_matches_one_call(arch):
    # KV caches, a rotating window (gpt_oss) and recurrent state (qwen3_next) carry across
    # chunks exactly as mlx_lm.generate runs them: chunks of 32 and 7, then the last token.
    long = get_shape("long-chunked")
    chunked = _run(arch, **long.fields())
    whole = _run(arch, prompts=long.prompts, decode_steps=long.decode_steps)
    assert chunked.prefill_calls[0].tolist() == [0] * 32 + [1] * 7 + [2]
    assert whole.prefill_calls is None
    np.testing.assert_allclose(chunked.prefill, whole.prefill, atol=1e-5)
    np.testing.assert_allclose(chunked.decode, whole.decode, atol=1e-5)
    assert (chunked.tokens == whole.tokens).all()
    assert set(chunked.layers) == set(whole.layers)


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss", "qwen3_next"])
def test_padded_batch_rows_match_each_prompt_alone(arch):
    mixed = get_shape("mixed")
    batch = _run(arch, **mixed.fields())
    for row, prompt in enumerate(mixed.prompts):
        alone = _run(arch, prompts=(prompt,), decode_steps=mixed.decode_steps)
        L = len(prompt)
        np.testing.assert_allclose(batch.prefill[row, :L], alone.prefill[0], atol=1e-5)
        np.testing.assert_allclose(batch.decode[:, row], alone.decode[:, 0], atol=1e-5)
        assert (batch.prefill[row, L:] == 0).all(), "padding positions are zero"
        assert batch.valid[row].sum() == L
        assert batch.layers["layer.1.out"][row, L:].any() == 0


def test_a_cache_mlx_lm_cannot_batch_skips_the_mixed_shape_with_the_reason():
    mixed = get_shape("mixed").fields()
    reason = shape_skip_reason(Case("deepseek_v41", **mixed))
    assert "cannot run the mixed shape" in reason and "LayerCache" in reason
    assert shape_skip_reason(Case("qwen3_moe", **mixed)) is None
    assert shape_skip_reason(Case("deepseek_v41")) is None


def _chunked_outputs() -> tuple[Output, Output]:
    rng = np.random.default_rng(0)
    calls = np.array([[0] * 32 + [1] * 7 + [2]])
    ref = Output(
        rng.normal(size=(1, 40, 16)).astype(np.float32),
        rng.normal(size=(3, 1, 16)).astype(np.float32),
        np.zeros((1, 4), np.int64),
        {},
        calls,
    )
    return ref, Output(ref.prefill.copy(), ref.decode.copy(), ref.tokens.copy(), {})


def test_diagnosis_names_the_first_divergent_prompt_token_and_its_chunk():
    ref, test = _chunked_outputs()
    test.prefill[0, 33:] += 1.0
    cmp = compare(ref, test, FP32, world=2)
    assert not cmp.passed
    assert "from prompt token 33 (prefill chunk 2 of 3)" in cmp.diagnoses


def test_diagnosis_names_the_first_divergent_decode_position():
    ref, test = _chunked_outputs()
    test.decode[1:] += 1.0
    cmp = compare(ref, test, FP32, world=2)
    assert cmp.diagnoses[:2] == ["decode-only", "from decode position 41 (step 2 of 3)"]


def test_a_single_call_diverging_everywhere_says_nothing_of_positions():
    ref, test = _chunked_outputs()
    ref.prefill_calls = None
    test.prefill += 1.0
    assert not any("prompt token" in d for d in compare(ref, test, FP32, world=2).diagnoses)


def test_padding_positions_do_not_count_in_the_metrics():
    ref, test = _chunked_outputs()
    ref.prefill_calls = np.array([[-1] * 8 + [0] * 31 + [1]])
    ref.prefill[0, :8] = test.prefill[0, :8] = 0.0
    cmp = compare(ref, test, FP32, world=2)
    assert cmp.passed and cmp.metrics.cosine == pytest.approx(1.0)


def _result(case: Case, status: str, diagnoses=()) -> CaseResult:
    return CaseResult(0, case, 2, status, diagnoses=list(diagnoses))


def _at(shape: str, arch: str = "qwen3_moe", strategy: str = "tp") -> Case:
    return Case(arch, strategy, **get_shape(shape).fields())


def test_summary_says_only_at_batch_1():
    results = [
        _result(_at("short"), "pass"),
        _result(_at("mixed"), "pass"),
        _result(_at("single-stream"), "fail", ["first divergent layer 2 (attention)"]),
        _result(_at("long-chunked"), "fail", ["first divergent layer 2 (attention)"]),
        _result(_at("short", "deepseek_v3"), "pass"),
        _result(_at("short", strategy="pp"), "fail"),
    ]
    (sentence,) = shape_summary(results)
    assert sentence == (
        "qwen3_moe/base/fp32/tp: fails at long-chunked, single-stream, passes at mixed, "
        "short: only at batch 1 (single-stream: first divergent layer 2 (attention))"
    )


def test_summary_says_past_how_many_prompt_tokens_and_padding():
    long = [_result(_at("short"), "pass"), _result(_at("long-chunked"), "fail", ["x"])]
    assert (
        "only at batch 1, with a prefill in chunks, past 8 prompt tokens"
        in (shape_summary(long)[0])
    )
    padded = [_result(_at("short"), "pass"), _result(_at("mixed"), "fail", ["y"])]
    assert (
        "only with padded prompts of different lengths, with a prefill in chunks, past 8"
        in (shape_summary(padded)[0])
    )
    longer = Case("qwen3_moe", decode_steps=20)
    decode = [_result(_at("short"), "pass"), _result(longer, "crash")]
    assert (
        "fails at custom, passes at short: only decoding past position 11"
        in (shape_summary(decode)[0])
    )


def test_summary_is_silent_when_every_shape_agrees():
    same = [_result(_at("short"), "fail"), _result(_at("long-chunked"), "fail")]
    assert shape_summary(same) == []
    assert shape_summary([_result(_at("short"), "pass"), _result(_at("mixed"), "skip")]) == []


def test_moe_suite_covers_the_shapes_for_every_arch_with_tp_or_pp():
    cases = load_suite("moe")
    shaped = {(c.arch, c.shape) for c in cases}
    archs = {c.arch for c in cases if c.shape == "short" and not c.layout}
    for arch in archs - {"muse_spark"}:
        assert (arch, "long-chunked") in shaped and (arch, "mixed") in shaped, arch
    # One strategy per architecture at the long shapes: tensor parallel where it exists.
    long = [c for c in cases if c.shape == "long-chunked" and c.arch != "muse_spark"]
    assert len(long) == len({c.arch for c in long})
    assert {c.strategy for c in long if c.arch == "qwen3_next"} == {"pp"}


def test_suite_matrix_takes_shapes_and_case_fields(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        '[[matrix]]\narchs = ["qwen3_moe", "qwen3_next"]\nstrategies = ["tp", "pp"]\n'
        'shapes = ["short", "window"]\nfirst_supported = true\ntolerance = { atol = 1e-4 }\n'
        '[[case]]\narch = "gpt_oss"\nshape = "mixed"\n'
    )
    cases = load_suite(str(suite))
    assert [(c.arch, c.strategy, c.shape) for c in cases] == [
        ("qwen3_moe", "tp", "short"),
        ("qwen3_moe", "tp", "window"),
        ("qwen3_next", "pp", "short"),
        ("qwen3_next", "pp", "window"),
        ("gpt_oss", "tp", "mixed"),
    ]
    assert cases[0].tolerance == {"atol": 1e-4} and cases[-1].tolerance == {}


def test_suite_with_an_unknown_shape_is_one_sentence(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[[matrix]]\narchs = ["qwen3_moe"]\nstrategies = ["tp"]\nshapes = "long"\n')
    with pytest.raises(HarnessError, match="shapes must be a list of shape names"):
        load_suite(str(suite))
    suite.write_text('[[case]]\narch = "qwen3_moe"\nshape = "long"\n')
    with pytest.raises(HarnessError, match="unknown shape 'long'"):
        load_suite(str(suite))


def test_override_shapes_and_arch_selection_keep_unsupported_strategies():
    cases = override_shapes([Case("qwen3_moe"), Case("qwen3_moe", prompt_text=("hi",))], ["mixed"])
    assert [c.shape for c in cases] == ["mixed", "short"]
    named = matrix_cases(["mixtral"], ["tp", "pp"], ["fp32"], {}, keep_unsupported=True)
    assert [c.strategy for c in named] == ["tp", "pp"]
    assert matrix_cases(["mixtral"], ["tp", "pp"], ["fp32"], {}) == []
    assert Case("qwen3_moe").prompts == DEFAULT_PROMPTS


def test_run_with_an_unknown_shape_is_one_line(run_cli, db_path):
    result = run_cli("run", "--suite", "smoke", "--shapes", "bogus", "--db", db_path)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "error: unknown shape 'bogus'; known: short, single-stream, long-chunked, window, mixed, "
        "long-prompt, past-prefill-step"
    ]
