"""The scenario format (harness.scenario): validation, round trips, keys; where a scenario
case first goes wrong (records.scenario); the rank side's kept models."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from harness import scenario as scenarios
from harness.case import Case
from harness.errors import HarnessError
from harness.faults import catalog
from harness.faults.catalog import CATALOG
from harness.faults.selftest import plan
from harness.records.ladder import TOLERANCES
from harness.records.outputs import Output
from harness.records.scenario import locate
from harness.run.parent.plan import RunOptions
from harness.run.parent.session import run
from harness.run.rank import model_cache
from harness.suites import load_suite

BATCH = {"kind": "batch", "prompts": [3, 9, 250], "prefill_step": 32, "decode": 8}
SERVE = {
    "kind": "serve",
    "prefill_step": 4,
    "ops": [
        {"op": "insert", "uid": 0, "prompt": 6, "max_tokens": 4},
        {"op": "step", "n": 3},
        {"op": "remove", "uid": 0},
        {"op": "insert", "uid": 1, "prompt": 8, "max_tokens": 3, "reuse": {"uid": 0, "tokens": 5}},
        {"op": "step", "n": 4},
    ],
}


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"kind": "stream"}, "'kind' must be one of batch, serve"),
        ({**BATCH, "prompts": []}, "'prompts' must be a list of 1 to 32"),
        ({**BATCH, "prompts": [1] * 33}, "'prompts' must be a list of 1 to 32"),
        ({**BATCH, "prompts": [0]}, "prompt length 0 must be an integer from 1"),
        ({**BATCH, "decode": -1}, "'decode' must be an integer from 0"),
        ({**BATCH, "extra": 1}, "unknown key(s) 'extra'"),
        ({"kind": "batch", "prompts": [1]}, "needs 'decode', 'prefill_step'"),
        ({**SERVE, "ops": [{"op": "remove", "uid": 3}]}, "removes uid 3, which is not in"),
        ({**SERVE, "ops": [SERVE["ops"][0], SERVE["ops"][0]]}, "inserts uid 0 again"),
        ({**SERVE, "ops": [{"op": "jump"}]}, "'op' one of insert, step, remove"),
        (
            {**SERVE, "ops": [{**SERVE["ops"][3], "uid": 2}]},
            "reuses uid 0, which no earlier op inserted",
        ),
        (
            {
                **SERVE,
                "ops": [*SERVE["ops"][:3], {**SERVE["ops"][3], "reuse": {"uid": 0, "tokens": 7}}],
            },
            "reused 'tokens' (at most both prompts) must be an integer from 1 to 6",
        ),
    ],
)
def test_each_mistake_is_one_sentence(bad, words):
    with pytest.raises(HarnessError) as error:
        Case("qwen3_moe", scenario=bad)
    message = str(error.value)
    assert words in message and "\n" not in message, message


def test_scenario_round_trips_and_names_the_case():
    plain = Case("qwen3_moe")
    assert "scenario" not in plain.to_dict()  # sidecars of cases without one are unchanged
    batch, serve = Case("qwen3_moe", scenario=BATCH), Case("qwen3_moe", scenario=SERVE)
    for case in (batch, serve):
        again = Case.from_dict(case.to_dict())
        assert again == case and again.key() == case.key() and again.scenario == case.scenario
    assert len({plain.key(), batch.key(), serve.key()}) == 3
    other = Case("qwen3_moe", scenario={**BATCH, "decode": 9})
    assert other.key() != batch.key()
    assert "batch 3x[3,9,250] step 32 decode 8" in batch.label()
    assert "serve 5 ops step 4 #" in serve.label()
    assert batch.watchdog_scale == -(-scenarios.work(BATCH) // 256)
    with pytest.raises(HarnessError, match="longest sequence holds 258 tokens"):
        batch.check_context({"max_position_embeddings": 257})


def test_suite_cases_carry_scenarios(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        '[[case]]\narch = "qwen3_moe"\nscenario = { kind = "batch", prompts = [3, 9], '
        "prefill_step = 4, decode = 2 }\n"
        '[[case]]\narch = "qwen3_moe"\nstrategy = "pp"\n'
        'scenario = { kind = "serve", prefill_step = 4, ops = [\n'
        '  { op = "insert", uid = 0, prompt = 5, max_tokens = 2 }, { op = "step", n = 4 } ] }\n'
    )
    batch, serve = load_suite(str(suite))
    assert batch.scenario == {"kind": "batch", "prompts": [3, 9], "prefill_step": 4, "decode": 2}
    assert serve.scenario["ops"][1] == {"op": "step", "n": 4}
    suite.write_text('[[case]]\narch = "qwen3_moe"\nscenario = { kind = "batch" }\n')
    with pytest.raises(HarnessError, match=r"s\.toml.*needs 'decode', 'prefill_step', 'prompts'"):
        load_suite(str(suite))


def test_prompts_depend_on_seed_stream_and_length():
    a = scenarios.prompt(0, 1, 12)
    assert a == scenarios.prompt(0, 1, 12) and a[:5] == scenarios.prompt(0, 1, 5)
    assert a != scenarios.prompt(1, 1, 12) and a != scenarios.prompt(0, 2, 12)
    assert all(0 < t < 256 for t in scenarios.prompt(3, 31, 600))


def _batch_output(B=3, L=5, S=4, V=16, lengths=(5, 2, 5)):
    rng = np.random.default_rng(0)
    calls = np.array([[0 if p < n else -1 for p in range(L)] for n in lengths], dtype=np.int32)
    prefill = rng.normal(size=(B, L, V)).astype(np.float32) * (calls >= 0)[..., None]
    return Output(
        prefill, rng.normal(size=(S, B, V)).astype(np.float32), np.zeros((B, S + 1)), {}, calls
    )


def test_batch_location_prefers_the_earliest_prompt_position_then_decode():
    spec = {"kind": "batch", "prompts": [5, 2, 5], "prefill_step": 5, "decode": 4}
    ref = _batch_output()
    test = Output(ref.prefill.copy(), ref.decode.copy(), ref.tokens, {}, ref.prefill_calls)
    tol = TOLERANCES["fp32"]
    assert locate(spec, ref, test, tol) is None
    test.decode[2, 1] += 1.0
    where = locate(spec, ref, test, tol)
    assert where["row"] == 1 and where["decode_step"] == 2 and where["position"] == 4
    assert where["sentence"] == "row 1 of 3, decode step 3 of 4 at cache position 4"
    test.prefill[2, 3] += 1.0
    test.prefill[0, 4] += 1.0
    where = locate(spec, ref, test, tol)
    assert (where["row"], where["position"], where["decode_step"]) == (2, 3, None)
    assert where["sentence"].startswith("row 2 of 3, prompt token 3 of 5")


def test_serve_location_names_the_request_op_and_who_left():
    spec = scenarios.check(SERVE)
    V = 8
    order = np.array([[0, 1, -1], [2, 3, 4]])
    ops = np.array([[1, 1, -1], [4, 4, 4]])
    ref = Output(
        np.ones((2, 1, V), np.float32),
        np.ones((2, 2, V), np.float32),
        np.zeros((2, 3), np.int64),
        {},
        np.zeros((2, 1), np.int32),
        schedule={"op": ops, "order": order, "reused": np.array([0, 5])},
    )
    test = Output(ref.prefill.copy(), ref.decode.copy(), ref.tokens, {}, ref.prefill_calls)
    test.decode[1, 1] += 1.0  # uid 1's token 2
    where = locate(spec, ref, test, TOLERANCES["fp32"])
    assert where["uid"] == 1 and where["decode_step"] == 2 and where["position"] == 9
    assert (where["op_index"], where["op"], where["after"], where["reused"]) == (4, "step", [0], 5)
    assert where["sentence"] == (
        "uid 1, its token 2 at cache position 9 (op 4: step), after uid 0 left the batch, "
        "reusing 5 tokens of uid 0's cache"
    )


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = mx.ones((2,))

    def __call__(self, x):
        return x * self.weight


def test_kept_models_are_reused_until_their_code_changes(monkeypatch):
    model_cache.clear()
    key = (model_cache.REFERENCE, 0, "tiny")
    first = model_cache.keep(key, _Tiny())
    builds = model_cache.builds
    assert model_cache.kept(key) is first and model_cache.builds == builds
    monkeypatch.setattr(_Tiny, "__call__", lambda self, x: x)  # a strategy patching a class
    assert model_cache.kept(key) is None and not model_cache.holds(key)
    model_cache.keep(key, _Tiny())
    sharded = (model_cache.SHARDED, 2, "tiny")
    model_cache.keep(sharded, _Tiny())
    for n in range(model_cache.CAPACITY):
        model_cache.keep((model_cache.TRUTH, 0, n), _Tiny())
    # Bounded, least recently used out first; references never push out a sharded model.
    assert not model_cache.holds(key) and model_cache.holds(sharded)
    model_cache.clear()


def test_cases_of_one_build_reuse_its_models():
    """In this process (the one rank of --ranks 1): three scenario cases of one build
    build the sharded model and the reference once each."""
    model_cache.clear()
    before = model_cache.builds
    cases = [
        Case("qwen3_moe", "tp", scenario={**BATCH, "prompts": [n, 4], "decode": 2})
        for n in (2, 3, 5)
    ]
    results = list(run(cases, RunOptions(ranks=1, repeats=0)))
    assert [r.status for r in results] == ["pass"] * 3
    assert model_cache.builds - before == 2
    model_cache.clear()


@pytest.mark.parametrize(
    "args, words",
    [
        (("--scenario", "{kind"), ("--scenario is not JSON",)),
        (("--scenario", '{"kind": "batch"}'), ("scenario: a batch scenario needs",)),
        (("--scenario", '{"kind": "batch"}', "--shapes", "mixed"), ("--shapes or --scenario",)),
        (("--seed", "-1"), ("--seed must be 0 or more",)),
    ],
)
def test_run_scenario_mistakes_are_one_line(run_cli, db_path, assert_one_line_error, args, words):
    result = run_cli("run", "--arch", "qwen3_moe", "--db", db_path, *args)
    assert_one_line_error(result, *words)


def test_run_reproduces_a_scenario_in_process(run_cli, db_path):
    """`harness run --scenario` at one rank, under a seed: the printed command of a
    search's failure."""
    ops = [{"op": "insert", "uid": 0, "prompt": 5, "max_tokens": 2}, {"op": "step", "n": 4}]
    spec = json.dumps({"kind": "serve", "prefill_step": 4, "ops": ops})
    command = "run --arch qwen3_moe --strategy tp --seed 3 --no-goldens".split()
    result = run_cli(*command, "--db", db_path, "--scenario", spec)
    assert result.code == 0, result.out + result.err
    assert "serve 2 ops step 4" in result.out and "seed=3" in result.out


def test_a_program_that_emits_nothing_is_the_setups_error():
    insert = {"op": "insert", "uid": 0, "prompt": 3, "max_tokens": 2}
    case = Case("qwen3_moe", "tp", scenario={"kind": "serve", "prefill_step": 4, "ops": [insert]})
    (result,) = run([case], RunOptions(ranks=1, repeats=0))
    assert result.status == "error" and "emitted no token" in result.reason
    assert "internal" not in result.reason


def test_serving_faults_plan_at_their_scenario():
    names = ["wide_batch", "cache_growth", "request_left", "reused_prefix", "tp_serve"]
    planned, not_applicable = plan(2, names=names)
    assert not not_applicable
    assert {p.fault.name for p in planned} == set(names)
    assert all(p.case.scenario == p.fault.scenario is not None for p in planned)
    classes = {CATALOG[name].bug_class for name in names[:4]}
    assert classes == {
        catalog.BATCH_WIDTH,
        catalog.CACHE_GROWTH,
        catalog.REQUEST_LEFT,
        catalog.REUSED_PREFIX,
    }


def test_a_padded_batch_with_a_one_token_prefill_chunk_is_skipped_on_a_sliding_window():
    # mlx-lm's BatchRotatingKVCache takes a 1-token update for a decode step and refuses it
    # before finalize(): a padded batch whose prefill has such a chunk cannot run there
    # (explore drew gpt_oss [1, 2]; the same batch in chunks of 2 tokens runs).
    from harness.models.build import shape_skip_reason

    def skip(arch, prompts, step):
        spec = {"kind": "batch", "prompts": prompts, "prefill_step": step, "decode": 0}
        return shape_skip_reason(Case(arch, scenario=spec))

    assert "BatchRotatingKVCache takes a 1-token prefill chunk" in skip("gpt_oss", [1, 2], 2048)
    assert "BatchRotatingKVCache" in skip("gpt_oss", [3, 4], 2)
    assert skip("gpt_oss", [3, 5], 2) is None  # chunks of 2
    assert skip("gpt_oss", [4, 4], 1) is None  # one length: no padding
    assert skip("qwen3_moe", [1, 2], 2048) is None  # no sliding window
