"""explore's records: the store's explore tables, the corpus replayed and exported as a
suite that loads back, the reproduction command, the service's run page, and the
command's one-sentence mistakes."""

import json
import shlex
import sqlite3

import pytest

from harness import suites, zoo
from harness.case import Case
from harness.explore import corpus, repro
from harness.explore.search import Found, Target
from harness.explore.space import Example
from harness.records import store
from harness.records.result import CaseResult
from harness.service import pages
from harness.status import CaseStatus

SERVE = {
    "kind": "serve",
    "prefill_step": 2048,
    "ops": [
        {"op": "insert", "uid": 0, "prompt": 1, "max_tokens": 1},
        {"op": "insert", "uid": 1, "prompt": 1, "max_tokens": 3},
        {"op": "step", "n": 4},
    ],
}
BATCH = {"kind": "batch", "prompts": [1, 1, 1], "prefill_step": 2048, "decode": 0}
TARGET = Target("qwen3_moe", "tp", ("fp32", "q4-bf16"))
FLAGS = repro.RunFlags(ranks=2)


def _found(scenario: dict, precision: str = "fp32") -> Found:
    case = Case("qwen3_moe", scenario=scenario)
    result = CaseResult(
        0, case, 2, CaseStatus.FAIL, reason="rank 0: decode-only; uid 1, its token 2"
    )
    result.location = {"uid": 1, "position": 2, "decode_step": 2, "after": [0]}
    example = Example(precision, scenario)
    return Found(
        TARGET, example, result, first_seen=example, learned=["after a request left the batch"]
    )


def _stored(tmp_path, *founds: Found):
    db = store.open_db(tmp_path / "e.db")
    run_id = store.start_run(db, "explore", "qwen3_moe", 2, None, None, ["harness", "explore"])
    rows = [corpus.failure_row(f, "harness run ...", 10) for f in founds]
    store.record_explore(db, run_id, 42, 420, rows)
    store.finish_run(db, run_id, "failed")
    return db, run_id


def test_the_store_migrates_to_explore_tables(tmp_path):
    db = store.open_db(tmp_path / "e.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
    assert {"examples", "operations"} <= set(db["runs"].columns_dict)
    assert "explore" in db["cases"].columns_dict and "explore_failures" in db.table_names()


def test_stored_failures_are_replayed_for_their_target_only(tmp_path):
    db, _ = _stored(tmp_path, _found(SERVE), _found(BATCH, "q4-bf16"), _found(SERVE))
    assert corpus.replays(db, TARGET) == [Example("fp32", SERVE), Example("q4-bf16", BATCH)]
    assert corpus.replays(db, Target("qwen3_moe", "tp", ("fp32",))) == [Example("fp32", SERVE)]
    assert corpus.replays(db, Target("qwen3_moe", "pp", ("fp32",))) == []
    assert corpus.replays(db, Target("deepseek_v3", "tp", ("fp32",))) == []


def test_the_export_is_a_suite_whose_cases_are_the_shrunk_failures(tmp_path):
    db, _ = _stored(tmp_path, _found(SERVE), _found(BATCH, "q4-bf16"), _found(SERVE))
    out = tmp_path / "found.toml"
    assert corpus.export(db, out) == 2
    cases = suites.load_suite(str(out))
    assert [(c.arch, c.strategy, c.precision, c.scenario) for c in cases] == [
        ("qwen3_moe", "tp", "fp32", SERVE),
        ("qwen3_moe", "tp", "q4-bf16", BATCH),
    ]
    assert "# learned: after a request left the batch" in out.read_text()


def test_the_reproduction_is_one_harness_run_command():
    argv = shlex.split(repro.command("qwen3_moe", "tp", "q4-bf16", SERVE, FLAGS))
    assert argv[:2] == ["harness", "run"] and argv[argv.index("--precision") + 1] == "q4-bf16"
    assert json.loads(argv[argv.index("--scenario") + 1]) == SERVE
    assert argv[argv.index("--ranks") + 1] == "2"
    cluster = repro.RunFlags(ranks=2, hostfile="hosts.json", impl=("qwen3_moe=my.py",))
    argv = shlex.split(repro.command("qwen3_moe", "tp", "fp32", BATCH, cluster))
    assert "--ranks" not in argv and argv[argv.index("--hostfile") + 1] == "hosts.json"
    assert argv[argv.index("--impl") + 1] == "qwen3_moe=my.py"


def test_the_run_page_shows_an_explore_runs_failures_and_counts(tmp_path):
    _, run_id = _stored(tmp_path, _found(SERVE))
    with sqlite3.connect(tmp_path / "e.db") as conn:
        conn.row_factory = sqlite3.Row
        run, _ = pages.run_page(conn, run_id)
    assert (run["examples"], run["operations"]) == (42, 420)
    (failure,) = run["explore_failures"]
    assert failure["learned"] == "after a request left the batch"
    assert json.loads(failure["scenario"]) == SERVE and failure["target"] == TARGET.key


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--arch", "qwen3_moe", "--budget", "0"], ["--budget", "above 0"]),
        (["--arch", "qwen3_moe", "--budget", "-5"], ["--budget"]),
        (["--arch", "no_such_arch", "--budget", "5"], ["unknown architecture 'no_such_arch'"]),
        (["--budget", "5"], ["--suite", "--arch"]),
        (["--arch", "qwen3_moe", "--precision", "q3"], ["unknown precision 'q3'"]),
    ],
)
def test_mistakes_are_one_sentence(run_cli, assert_one_line_error, tmp_path, args, fragments):
    result = run_cli("explore", *args, "--db", str(tmp_path / "e.db"))
    assert_one_line_error(result, *fragments)


def test_export_without_a_database_is_one_sentence(run_cli, assert_one_line_error, tmp_path):
    result = run_cli(
        "explore", "export", "--out", str(tmp_path / "x.toml"), "--db", str(tmp_path / "none.db")
    )
    assert_one_line_error(result, "no database at")


def test_export_writes_the_suite(run_cli, tmp_path):
    _stored(tmp_path, _found(SERVE))
    out = tmp_path / "found.toml"
    result = run_cli("explore", "export", "--out", str(out), "--db", str(tmp_path / "e.db"))
    assert result.code == 0 and "1 failure(s) written" in result.out
    assert suites.load_suite(str(out))[0].scenario == SERVE


def test_the_explore_group_help_is_the_search_with_its_example(run_cli):
    result = run_cli("explore", "--help")
    assert result.code == 0 and "Example: harness explore --arch" in result.out
    assert "export" in result.out


METAL_ONLY = pytest.mark.skipif(
    zoo.support("muse_spark").available,
    reason="muse_spark runs here (Metal): nothing is skipped",
)


@METAL_ONLY
def test_a_suites_architecture_that_cannot_run_here_is_skipped_not_the_whole_plan():
    # The moe suite lists muse_spark, whose kernels are Metal-only: on this CPU it is
    # skipped with its reason and the others are explored (the nightly explores `--suite moe`).
    from harness.explore.runner import plan_targets

    targets, skipped = plan_targets(["muse_spark", "qwen3_moe"], None, ["fp32"], 2)
    assert {t.key for t in targets} == {"qwen3_moe/tp/fp32", "qwen3_moe/pp/fp32"}
    assert [key for key, _ in skipped] == ["muse_spark/tp/fp32", "muse_spark/pp/fp32"]
    assert all("Metal" in why for _, why in skipped)


@METAL_ONLY
def test_a_plan_with_nothing_left_is_one_sentence(run_cli, assert_one_line_error, tmp_path):
    result = run_cli("explore", "--arch", "muse_spark", "--db", str(tmp_path / "e.db"))
    assert_one_line_error(result, "nothing to explore at 2 rank(s)", "Metal")


def test_a_suites_known_failure_is_left_out_of_its_strategys_search_with_its_reason():
    # moe marks deepseek_v41's pipeline at q4-bf16 as mlx-lm's own crash: the search would
    # only find it again. Another --strategy replaces the suite's, and its marks with them.
    from harness.commands.explore import _pairs

    pairs, skipped = _pairs("moe", None, None, ["fp32", "q4", "q4-bf16"])
    assert ("deepseek_v41", "pp", ["fp32", "q4"], ()) in pairs
    ((key, why),) = skipped
    assert key == "deepseek_v41/pp/q4-bf16" and why.startswith("known failure: mlx-lm's")
    pairs, skipped = _pairs("moe", None, "pp", ["q4-bf16"])
    assert ("deepseek_v41", "pp", ["q4-bf16"], (("atol", 2e-4),)) in pairs and not skipped


def test_a_suites_target_is_held_to_the_loosest_tolerance_the_suite_gives_it():
    # moe loosens deepseek_v41's tp to atol 2e-4 (its compressed attention past 39 tokens,
    # which explore's longer prompts reach); the others keep the precision's own.
    from harness.commands.explore import _pairs
    from harness.explore.runner import case_of, plan_targets
    from harness.explore.space import Example

    pairs, _ = _pairs("moe", None, None, ["fp32"])
    tolerances = {(a, s): t for a, s, _, t in pairs}
    assert tolerances[("deepseek_v41", "tp")] == (("atol", 2e-4),)
    assert tolerances[("qwen3_moe", "tp")] == ()
    (target, *_), _ = plan_targets(["deepseek_v41"], "tp", ["fp32"], 2, (("atol", 2e-4),))
    assert case_of(target, Example("fp32", BATCH)).tolerance == {"atol": 2e-4}
