import pytest

from harness import suites
from harness.case import Case
from harness.errors import HarnessError
from harness.zoo import ARCHS, support


def test_moe_suite_covers_every_supported_moe_arch_strategy_and_precision():
    cases = suites.load_suite("moe")
    combos = {(c.arch, c.strategy, c.precision) for c in cases}
    for name, arch in ARCHS.items():
        if not arch.moe or not support(name).available:
            continue
        for strategy in ("tp", "pp"):
            expected = getattr(support(name), strategy)
            for precision in ("fp32", "q4", "q4-bf16", "bf16"):
                assert ((name, strategy, precision) in combos) == expected, (
                    name,
                    strategy,
                    precision,
                )
    assert all(ARCHS[c.arch].moe for c in cases)


def test_nightly_suite_runs_8_bit_weights_with_bf16_activations_for_every_moe_arch():
    """q8-bf16 left the moe suite for its time; the nightly runs it wherever moe runs q4-bf16."""
    nightly = {
        (c.arch, c.strategy) for c in suites.load_suite("nightly") if c.precision == "q8-bf16"
    }
    moe = {(c.arch, c.strategy) for c in suites.load_suite("moe") if c.precision == "q4-bf16"}
    assert nightly == moe and len(nightly) > 30
    assert not any(c.precision == "q8-bf16" for c in suites.load_suite("moe"))


def test_moe_suite_marks_known_failures_with_their_reason():
    known = [c for c in suites.load_suite("moe") if c.known_failure]
    assert {(c.arch, c.strategy, c.precision) for c in known} == {
        ("deepseek_v41", "pp", "q4-bf16"),
    }
    nightly = [c for c in suites.load_suite("nightly") if c.known_failure]
    assert {(c.arch, c.strategy, c.precision) for c in nightly} == {
        ("deepseek_v41", "pp", "q8-bf16"),
    }
    assert all("compress_kv" in c.known_failure for c in known + nightly)


def test_nightly_suite_runs_past_one_prefill_step_for_every_moe_arch():
    cases = [c for c in suites.load_suite("nightly") if c.shape == "past-prefill-step"]
    runnable = {
        n
        for n, a in ARCHS.items()
        if a.moe and support(n).available and (support(n).tp or support(n).pp)
    }
    assert {c.arch for c in cases} >= runnable
    assert all(max(map(len, c.prompts)) > 2048 and c.precision == "fp32" for c in cases)
    assert all(c.prefill_step == 2048 for c in cases)
    for arch in runnable:
        first = "tp" if support(arch).tp else "pp"
        assert {c.strategy for c in cases if c.arch == arch} == {first}, arch


def test_dense_and_smoke_suites_load():
    assert all(not ARCHS[c.arch].moe for c in suites.load_suite("dense"))
    assert 1 <= len(suites.load_suite("smoke")) <= 8


@pytest.mark.parametrize(
    "label, dtype, quant",
    [
        ("fp32", "float32", None),
        ("bf16", "bfloat16", None),
        ("q4", "float32", 4),
        ("q8", "float32", 8),
        ("q4-bf16", "bfloat16", 4),
    ],
)
def test_parse_precision(label, dtype, quant):
    assert suites.parse_precision(label) == {"dtype": dtype, "quant": quant}
    assert Case("llama", dtype=dtype, quant=quant).precision == label


def test_override_strategy_dedupes():
    cases = suites.override_strategy(suites.load_suite("moe"), "none")
    assert {c.strategy for c in cases} == {"none"}
    assert len(cases) == len({c.key() for c in cases})


@pytest.mark.parametrize("suite", ["moe", "nightly"])
def test_a_known_failure_follows_only_the_strategy_it_was_written_for(suite):
    marked = [c for c in suites.load_suite(suite) if c.known_failure]
    assert {c.strategy for c in marked} == {"pp"}
    for strategy in ("tp", "my_shard.py:shard", "none"):
        cases = suites.override_strategy(suites.load_suite(suite), strategy)
        assert not [c.label() for c in cases if c.known_failure], strategy
    kept = suites.override_strategy(suites.load_suite(suite), "pp")
    assert {c.label() for c in kept if c.known_failure} == {c.label() for c in marked}


def test_case_key_ignores_parallel_layout():
    assert Case("qwen3_moe", "tp").key() == Case("qwen3_moe", "pp").key()
    assert Case("qwen3_moe", quant=4).key() != Case("qwen3_moe").key()
    assert Case("qwen3_moe", seed=1).key() != Case("qwen3_moe").key()


def test_suite_without_cases(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('description = "nothing"\n')
    with pytest.raises(HarnessError, match="defines no cases"):
        suites.load_suite(str(path))


def test_explicit_case_fields(tmp_path):
    path = tmp_path / "one.toml"
    path.write_text(
        '[defaults]\ndecode_steps = 3\n[[case]]\narch = "deepseek_v3"\nstrategy = "pp"\n'
        'precision = "q8"\nseed = 7\ntolerance = { atol = 1e-3 }\n'
    )
    (case,) = suites.load_suite(str(path))
    assert (case.arch, case.strategy, case.quant, case.seed, case.decode_steps) == (
        "deepseek_v3",
        "pp",
        8,
        7,
        3,
    )
    assert case.tolerance == {"atol": 1e-3}
