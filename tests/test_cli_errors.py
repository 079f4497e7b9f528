"""Every user mistake: one clear sentence on stderr, exit code 2, no traceback."""

import sys

import pytest

from harness.records import store
from harness.run.parent import target


def test_unknown_suite_lists_known(run_cli, db_path, assert_one_line_error):
    result = run_cli("run", "--suite", "nope", "--db", db_path)
    assert_one_line_error(result, "unknown suite 'nope'", "moe", "smoke")


def test_unknown_arch_lists_known(run_cli, db_path, assert_one_line_error):
    result = run_cli("run", "--arch", "qwen9_moe", "--db", db_path)
    assert_one_line_error(result, "qwen9_moe", "qwen3_moe")


def test_unknown_strategy_lists_known(run_cli, db_path, assert_one_line_error):
    result = run_cli("run", "--suite", "smoke", "--strategy", "zigzag", "--db", db_path)
    assert_one_line_error(result, "unknown strategy 'zigzag'", "none, tp, pp")


def test_strategy_module_that_does_not_import(run_cli, db_path, assert_one_line_error):
    result = run_cli(
        "run", "--suite", "smoke", "--strategy", "no_such_pkg.mod:shard", "--db", db_path
    )
    assert_one_line_error(result, "no_such_pkg.mod", "does not import")


def test_strategy_file_that_raises_on_import(run_cli, db_path, tmp_path, assert_one_line_error):
    broken = tmp_path / "broken.py"
    broken.write_text("import does_not_exist\n")
    result = run_cli("run", "--suite", "smoke", "--strategy", f"{broken}:shard", "--db", db_path)
    assert_one_line_error(result, "broken.py", "does not import")


def test_strategy_file_without_the_function(run_cli, db_path, tmp_path, assert_one_line_error):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    result = run_cli("run", "--suite", "smoke", "--strategy", f"{empty}:shard", "--db", db_path)
    assert_one_line_error(result, "no callable 'shard'")


def test_malformed_toml_names_file_and_line(run_cli, db_path, tmp_path, assert_one_line_error):
    suite = tmp_path / "bad.toml"
    suite.write_text('description = "x"\n[[case]]\narch = \n')
    result = run_cli("run", "--suite", str(suite), "--db", db_path)
    assert_one_line_error(result, "bad.toml", "malformed TOML", "line 3")


def test_suite_with_unknown_field(run_cli, db_path, tmp_path, assert_one_line_error):
    suite = tmp_path / "typo.toml"
    suite.write_text('[[case]]\narch = "qwen3_moe"\nstrategee = "tp"\n')
    result = run_cli("run", "--suite", str(suite), "--db", db_path)
    assert_one_line_error(result, "typo.toml", "strategee")


def test_unknown_precision(run_cli, db_path, assert_one_line_error):
    result = run_cli("run", "--arch", "qwen3_moe", "--precision", "q3", "--db", db_path)
    assert_one_line_error(result, "unknown precision 'q3'")


@pytest.mark.parametrize("ranks", ["0", "-2"])
def test_ranks_below_one(run_cli, db_path, ranks, assert_one_line_error):
    result = run_cli("run", "--suite", "smoke", "--ranks", ranks, "--db", db_path)
    assert_one_line_error(result, "--ranks must be at least 1")


def test_suite_and_arch_together(run_cli, db_path, assert_one_line_error):
    result = run_cli("run", "--suite", "smoke", "--arch", "llama", "--db", db_path)
    assert_one_line_error(result, "either --suite")


def test_mlx_launch_missing(run_cli, db_path, monkeypatch, tmp_path, assert_one_line_error):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_cli("run", "--suite", "smoke", "--ranks", "2", "--db", db_path)
    assert_one_line_error(result, "mlx.launch was not found")


def test_unknown_backend(run_cli, db_path, assert_one_line_error):
    result = run_cli(
        "run", "--suite", "smoke", "--ranks", "2", "--backend", "carrier-pigeon", "--db", db_path
    )
    assert_one_line_error(result, "unknown backend 'carrier-pigeon'")


def test_missing_hostfile(run_cli, db_path, tmp_path, assert_one_line_error):
    result = run_cli(
        "run",
        "--suite",
        "smoke",
        "--ranks",
        "2",
        "--hostfile",
        str(tmp_path / "hosts.json"),
        "--db",
        db_path,
    )
    assert_one_line_error(result, "hostfile", "does not exist")


def test_report_on_empty_database(run_cli, db_path, assert_one_line_error):
    store.open_db(db_path)
    result = run_cli("report", "--db", db_path)
    assert_one_line_error(result, "no runs yet")


READERS = {
    "report": ["report", "--db", "{missing}"],
    "report --markdown": ["report", "--markdown", "--run", "1", "--db", "{missing}"],
    "compare": ["compare", "1", "2", "--db", "{missing}"],
    "compare, second file": ["compare", "1", "1", "--db", "{present}", "--db", "{missing}"],
    "serve": ["serve", "--db", "{missing}", "--port", "0"],
}


@pytest.mark.parametrize("argv", READERS.values(), ids=READERS.keys())
def test_commands_that_read_a_database_never_create_one(
    run_cli, tmp_path, record_run, argv, assert_one_line_error
):
    """A typo in --db is one sentence and exit 2; no empty database appears at the typo."""
    present, missing = tmp_path / "present.db", tmp_path / "typo.db"
    record_run(str(present), "smoke", [{"arch": "llama"}])
    args = [a.format(missing=missing, present=present) for a in argv]
    assert_one_line_error(run_cli(*args), f"no database at {missing}")
    assert not missing.exists()


def test_serve_without_a_database_in_the_working_directory(
    run_cli, tmp_path, monkeypatch, assert_one_line_error
):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli("serve", "--port", "0"), "no database at harness.db")
    assert not (tmp_path / "harness.db").exists()


def test_report_unknown_run(run_cli, db_path, assert_one_line_error):
    run_cli("run", "--arch", "llama", "--strategy", "none", "--repeats", "1", "--db", db_path)
    result = run_cli("report", "--run", "999", "--db", db_path)
    assert_one_line_error(result, "no run with id 999")


def test_launcher_found_beside_python():
    assert target.find_launcher().endswith("mlx.launch")


def test_run_arch_at_ranks_that_break_a_rule(run_cli, db_path, assert_one_line_error):
    result = run_cli(
        "run", "--arch", "qwen3_moe", "--strategy", "tp", "--ranks", "3", "--db", db_path
    )
    assert_one_line_error(result, "num_attention_heads (8)", "3 ranks", "largest rank count")


def test_preflight_command_violation_and_ok(run_cli, assert_one_line_error):
    result = run_cli("preflight", "--arch", "deepseek_v3", "--ranks", "8", "--strategy", "pp")
    assert_one_line_error(
        result, "num_hidden_layers (4)", "8 ranks", "largest rank count that works for it is 4"
    )
    ok = run_cli("preflight", "--arch", "deepseek_v3", "--ranks", "4", "--strategy", "pp")
    assert ok.code == 0 and "ok:" in ok.out


def test_preflight_missing_config(run_cli, tmp_path, assert_one_line_error):
    result = run_cli("preflight", "--config", str(tmp_path / "nope"), "--ranks", "2")
    assert_one_line_error(result, "has no config.json")


def test_preflight_reads_a_checkpoint_config(run_cli, tmp_path, assert_one_line_error):
    import json

    from harness.case import Case
    from harness.models.build import tiny_config

    config = tiny_config(Case("qwen3_moe"))
    config["moe_intermediate_size"] = 90
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_cli("preflight", "--config", str(tmp_path), "--ranks", "4", "--strategy", "tp")
    assert_one_line_error(result, "moe_intermediate_size (90)", "4 ranks")


def test_suite_case_breaking_a_rule_is_skipped_with_reason(run_cli, db_path, tmp_path):
    from harness.records import store

    suite = tmp_path / "three.toml"
    suite.write_text('[[case]]\narch = "qwen3_moe"\nstrategy = "tp"\n')
    # --ranks 3 would launch; the only case is skipped before anything starts.
    result = run_cli("run", "--suite", str(suite), "--ranks", "3", "--db", db_path)
    assert result.code == 0, result.err
    _, cases = store.get_run(store.open_db(db_path), None)
    assert cases[0]["status"] == "skip" and "num_attention_heads (8)" in cases[0]["reason"]


def test_hostfile_sets_rank_count_and_must_agree(run_cli, db_path, tmp_path, assert_one_line_error):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}]')
    result = run_cli(
        "run", "--suite", "smoke", "--ranks", "4", "--hostfile", str(hostfile), "--db", db_path
    )
    assert_one_line_error(result, "--ranks 4 disagrees with the 2 hosts")
    hostfile.write_text("{not json")
    result = run_cli("run", "--suite", "smoke", "--hostfile", str(hostfile), "--db", db_path)
    assert_one_line_error(result, "not readable JSON")


def test_rank_interpreter_without_mlx_is_named_before_any_case(
    run_cli, db_path, tmp_path, assert_one_line_error
):
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
    )
    python = str(tmp_path / "bare" / "bin" / "python")
    result = run_cli(
        "run", "--arch", "qwen3_moe", "--ranks", "2", "--python", python, "--db", db_path
    )
    assert_one_line_error(result, f"{python} has no mlx or mlx-lm installed")
