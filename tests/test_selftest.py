"""The selftest: judging (fast, on constructed results), the catalog's consistency, and
the real thing at 2 ranks in one launch: every cataloged fault caught with its diagnosis
at its layer, every control passing."""

import json

import numpy as np
import pytest

from harness.case import Case
from harness.faults import catalog
from harness.faults.catalog import CATALOG, Fault
from harness.faults.selftest import judge, plan, run_selftest
from harness.records import store
from harness.records.ladder import TOLERANCES, Comparison, Metrics, compare
from harness.records.outputs import Output
from harness.records.result import CaseResult
from harness.shapes import SHAPES
from harness.status import SelftestVerdict

FAULT = Fault(
    name="example",
    strategy="harness.faults.reduction:double_reduce_mlp",
    bug_class=catalog.UNSHARDED_SUM,
    applies=catalog.tp(),
    representative=("qwen3_moe",),
    layer=1,
    part="mlp/moe",
    diagnoses=("scaled x{ranks}", "first divergent layer 1 (mlp/moe)"),
)
CONTROL = Fault(
    name="control",
    strategy="tp",
    bug_class=catalog.CONTROL,
    applies=catalog.tp(),
    representative=("qwen3_moe",),
    expected="pass",
)
CRASH = Fault(
    name="crash",
    strategy="harness.faults.heads:kv_heads_not_divided",
    bug_class=catalog.HEADS_NOT_DIVIDED,
    applies=catalog.tp(),
    representative=("qwen3_moe",),
    expected="crash",
    diagnoses=("rank 0 raised",),
)


def _result(status: str, diagnoses=(), layer=None, part=None, reason=None) -> CaseResult:
    nan = float("nan")
    metrics = Metrics(
        nan, nan, nan, nan, nan, nan, status == "pass", None, None, nan, nan, nan, False
    )
    comparisons = {}
    if status in ("pass", "fail"):
        comparisons = {
            r: Comparison(status == "pass", metrics, list(diagnoses), layer, part) for r in (0, 1)
        }
    return CaseResult(
        0,
        Case("qwen3_moe", FAULT.strategy),
        2,
        status,
        reason,
        comparisons=comparisons,
        diagnoses=list(diagnoses),
    )


def test_fault_with_expected_diagnosis_at_its_layer_is_caught():
    result = _result(
        "fail",
        ["scaled x2", "first divergent layer 1 (mlp/moe)"],
        1,
        "mlp/moe",
        "rank 0: scaled x2; first divergent layer 1 (mlp/moe)",
    )
    verdict = judge(FAULT, result)
    assert verdict.verdict == SelftestVerdict.CAUGHT and verdict.ok
    assert verdict.expected_diagnoses == ["scaled x2", "first divergent layer 1 (mlp/moe)"]
    assert (
        (verdict.layer, verdict.part)
        == (verdict.expected_layer, verdict.expected_part)
        == (1, "mlp/moe")
    )


def test_fault_that_passes_is_missed():
    verdict = judge(FAULT, _result("pass"))
    assert verdict.verdict == SelftestVerdict.MISSED and not verdict.ok


@pytest.mark.parametrize(
    "diagnoses, layer, part",
    [
        (["first divergent layer 1 (mlp/moe)"], 1, "mlp/moe"),  # no "scaled x2"
        (["scaled x2", "first divergent layer 2 (mlp/moe)"], 2, "mlp/moe"),  # wrong layer
        (["scaled x2", "first divergent layer 1 (attention)"], 1, "attention"),  # wrong part
    ],
)
def test_fault_failing_for_another_reason_is_a_wrong_diagnosis(diagnoses, layer, part):
    verdict = judge(FAULT, _result("fail", diagnoses, layer, part))
    assert verdict.verdict == SelftestVerdict.WRONG and not verdict.ok
    assert verdict.diagnoses == diagnoses


def test_fault_expected_to_fail_that_crashes_is_a_wrong_diagnosis():
    verdict = judge(FAULT, _result("crash", reason="rank 1 killed by SIGSEGV"))
    assert verdict.verdict == SelftestVerdict.WRONG and verdict.detail == "rank 1 killed by SIGSEGV"


def test_crash_is_judged_by_its_reason():
    reason = (
        "rank 0 raised ValueError: [rms_norm] ...; rank 1 raised ValueError\n--- rank 0 stderr ---"
    )
    assert judge(CRASH, _result("crash", reason=reason)).verdict == SelftestVerdict.CAUGHT
    assert (
        judge(CRASH, _result("crash", reason="rank 1 killed by SIGABRT")).verdict
        == SelftestVerdict.WRONG
    )


def test_controls_pass_or_raise_false_alarms():
    assert judge(CONTROL, _result("pass")).verdict == SelftestVerdict.PASSED
    alarm = judge(CONTROL, _result("fail", ["first divergent layer 0 (attention)"], 0, "attention"))
    assert alarm.verdict == SelftestVerdict.FALSE_ALARM and not alarm.ok


def test_skipped_or_errored_cases_prove_nothing():
    for status in ("skip", "error"):
        verdict = judge(FAULT, _result(status, reason="why"))
        assert verdict.verdict == SelftestVerdict.NOT_RUN and not verdict.ok


def test_catalog_covers_every_bug_class_and_its_representatives_apply():
    classes = {f.bug_class for f in CATALOG.values()}
    for name in (
        "WRONG_AXIS",
        "UNSHARDED_SUM",
        "FUSED_SPLIT",
        "SATURATING",
        "HEADS_NOT_DIVIDED",
        "MISSING_SUM",
        "RANK_ORDER",
        "PIPELINE",
        "DECODE_ONLY",
        "SMALL",
        "PREFILL_CHUNK",
        "TOKEN_COUNT",
        "BATCH_ONE",
        "WINDOW",
        "PADDING",
        "BF16_ONLY",
        "BF16_FEW",
        "PAST_PREFILL_STEP",
        "STATE_CARRIED",
        "CONTROL",
    ):
        assert getattr(catalog, name) in classes, name
    for fault in CATALOG.values():
        assert fault.representative, fault.name
        for arch in fault.representative:
            assert fault.applies_to(arch), (fault.name, arch)
        if not fault.control:
            assert fault.expected in ("fail", "crash", "timeout") and fault.diagnoses, fault.name
    assert {f.precision for f in CATALOG.values() if f.control} == {"fp32", "q4", "q4-bf16"}
    # Every shape profile but the short one has a fault and a control of its own.
    shown = {f.shape for f in CATALOG.values() if not f.control}
    controlled = {f.shape for f in CATALOG.values() if f.control}
    assert shown >= set(SHAPES) - {"short", "long-prompt"}, set(SHAPES) - shown
    assert controlled >= {"long-chunked", "mixed"}


def test_shape_faults_run_at_their_shape():
    planned, _ = plan(2, names=["later_prefill_chunk", "unmasked_padding"])
    assert {p.case.shape for p in planned} == {"long-chunked", "mixed"}
    assert all(p.case.prefill_step for p in planned)


def test_plan_puts_crashes_last_and_needs_two_ranks():
    planned, not_applicable = plan(2)
    expected = [p.fault.expected for p in planned]
    assert expected.index("crash") > max(i for i, e in enumerate(expected) if e != "crash")
    assert not not_applicable
    assert all(p.case.precision == p.fault.precision for p in planned)
    planned, _ = plan(2, names=["double_reduce_mlp"], precision="q4-bf16")
    assert {p.case.precision for p in planned} == {"q4-bf16"}
    planned, not_applicable = plan(1)
    assert not planned and all("at least 2 ranks" in why for _, _, why in not_applicable)


def test_a_layer_no_rank_ran_is_named():
    rng = np.random.default_rng(0)
    layers = {
        f"layer.{i}.{p}": rng.normal(size=(1, 4, 8)).astype(np.float32)
        for i in range(4)
        for p in ("attn", "mlp", "out")
    }
    ref = Output(
        rng.normal(size=(1, 4, 16)).astype(np.float32),
        np.zeros((0, 1, 16), np.float32),
        np.zeros((1, 1), np.int64),
        layers,
    )
    skipped = {k: v + (k >= "layer.3") for k, v in layers.items() if not k.startswith("layer.2.")}
    test = Output(ref.prefill + 1, ref.decode, ref.tokens, skipped)
    cmp = compare(ref, test, TOLERANCES["fp32"], world=2)
    assert "layer 2 did not run on any rank" in cmp.diagnoses
    assert (cmp.first_divergent_layer, cmp.first_divergent_part) == (2, "layer output")


def test_verdicts_are_stored_with_the_case(db_path):
    database = store.open_db(db_path)
    run_id = store.start_run(
        database, "selftest", "selftest", 2, None, None, ["harness", "selftest"]
    )
    result = _result("pass")
    verdict = judge(FAULT, result)
    store.record(database, run_id, result, verdict.row())
    row = next(
        iter(database.query("select verdict, expected from cases where run_id = ?", [run_id]))
    )
    assert row["verdict"] == SelftestVerdict.MISSED
    assert json.loads(row["expected"])["diagnoses"] == [
        "scaled x2",
        "first divergent layer 1 (mlp/moe)",
    ]


def test_command_has_help_with_an_example():
    from harness.commands.selftest import selftest

    assert "Example: harness selftest --ranks 2" in selftest.__doc__


@pytest.mark.multirank
def test_selftest_catches_every_fault_and_passes_every_control(db_path):
    report = run_selftest(2, timeout=60, database=store.open_db(db_path))
    wrong = [
        (v.fault, v.arch, v.verdict, v.status, v.diagnoses, v.detail)
        for v in report.verdicts
        if not v.ok
    ]
    assert not wrong
    assert report.detection_rate == 1.0 and report.false_alarm_rate == 0.0
    ran = {v.fault for v in report.verdicts}
    assert ran == set(CATALOG), set(CATALOG) - ran
    run, cases = store.get_run(store.open_db(db_path), report.run_id)
    assert run["kind"] == "selftest" and run["status"] == "passed"
    assert len(cases) == len(report.verdicts)
    assert {c["verdict"] for c in cases} == {SelftestVerdict.CAUGHT, SelftestVerdict.PASSED}


@pytest.mark.multirank
def test_cases_after_one_where_every_rank_raised_still_run():
    # Every rank raising ends the launch after recording it; the next case must be
    # relaunched, not recorded as a crash it never had.
    from harness.run.parent.plan import RunOptions
    from harness.run.parent.session import run

    crash = "harness.faults.heads:kv_heads_not_divided"
    cases = [
        Case("qwen3_moe", crash, decode_steps=2),
        Case("llama", crash, decode_steps=2),
        Case("qwen3_moe", "tp", decode_steps=2),
    ]
    results = {r.index: r for r in run(cases, RunOptions(ranks=2, repeats=1, goldens=None))}
    assert [results[i].status for i in range(3)] == ["crash", "crash", "pass"]
    for i in (0, 1):
        assert "rank 0 raised ValueError" in results[i].reason, results[i].reason
