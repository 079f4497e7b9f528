"""The status vocabularies: their stored values never change (old databases must read the
same), and one word in two vocabularies is two types."""

from harness.records import store
from harness.status import (
    FAILING,
    BenchStatus,
    CaseStatus,
    GoldenStatus,
    ReferenceStatus,
    RunStatus,
    SelftestVerdict,
    StepVerdict,
)

STORED = {
    CaseStatus: ["pass", "fail", "skip", "crash", "timeout", "error"],
    RunStatus: ["running", "passed", "failed", "interrupted"],
    BenchStatus: ["ok", "crash", "timeout", "error"],
    ReferenceStatus: ["ok", "skip", "crash", "timeout", "error"],
    GoldenStatus: [
        "match",
        "mismatch",
        "missing",
        "corrupt",
        "written",
        "exists",
        "updated",
        "unavailable",
    ],
    StepVerdict: ["good", "bad", "skip"],
    SelftestVerdict: ["caught", "missed", "wrong diagnosis", "passed", "false alarm", "not run"],
}


def test_stored_values_never_change():
    for vocabulary, values in STORED.items():
        assert [member.value for member in vocabulary] == values, vocabulary.__name__


def test_a_bisect_skip_is_not_a_case_skip():
    assert type(StepVerdict.SKIP) is not type(CaseStatus.SKIP)
    assert StepVerdict.SKIP not in FAILING and CaseStatus.SKIP not in FAILING


def test_failing_statuses_and_bad_verdicts():
    assert set(CaseStatus) - set(FAILING) == {CaseStatus.PASS, CaseStatus.SKIP}
    assert [v for v in SelftestVerdict if not v.bad] == [
        SelftestVerdict.CAUGHT,
        SelftestVerdict.PASSED,
    ]


def test_an_old_database_reads_into_the_vocabulary(tmp_path):
    """Rows written as plain strings (before the types) compare equal to the members."""
    db = store.open_db(tmp_path / "old.db")
    run_id = store.start_run(db, "run", "x", 1, None, None, ["harness", "run"])
    with db.conn:
        db["runs"].update(run_id, {"status": "passed"})
    run = db["runs"].get(run_id)
    assert run["status"] == RunStatus.PASSED and RunStatus(run["status"]) is RunStatus.PASSED
