"""Where suites and goldens are found: the working directory's own, --goldens and
$HARNESS_GOLDENS, then what the harness ships (read-only once installed)."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths, suites
from harness.case import Case
from harness.records import goldens
from harness.records.provenance import package_version

REPO = Path(__file__).resolve().parents[1]
LLAMA_SUITE = '[[case]]\narch = "llama"\nstrategy = "none"\ndecode_steps = 1\n'


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the checkout, without $HARNESS_GOLDENS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(paths.GOLDENS_ENV, raising=False)
    return tmp_path


@pytest.fixture
def installed(monkeypatch, elsewhere):
    """The harness as a wheel installs it: no checkout around the package."""
    monkeypatch.setattr(paths, "CHECKOUT", None)
    return elsewhere


def test_a_checkout_reads_its_own_suites_and_goldens():
    # An editable install imports the checkout's package: recording a golden there
    # writes into the checkout, which is what gets committed and shipped.
    assert paths.CHECKOUT == REPO
    assert paths.SHIPPED_GOLDENS == REPO / "goldens"
    assert paths.SHIPPED_SUITES == REPO / "suites"
    assert not paths.goldens().read_only


def test_goldens_come_from_the_option_then_the_environment_then_the_working_directory(
    elsewhere, monkeypatch
):
    assert paths.goldens() == paths.Goldens(paths.SHIPPED_GOLDENS, "checkout")
    (elsewhere / "goldens").mkdir()
    assert paths.goldens().directory == elsewhere / "goldens"
    monkeypatch.setenv(paths.GOLDENS_ENV, str(elsewhere / "from-env"))
    assert paths.goldens().directory == elsewhere / "from-env"
    assert paths.goldens(elsewhere / "opt").directory == elsewhere / "opt"


def test_shipped_goldens_are_read_only_once_installed(installed):
    chosen = paths.goldens()
    assert chosen.read_only
    assert chosen.describe() == f"goldens: {paths.SHIPPED_GOLDENS} (shipped, read-only)"
    assert paths.goldens(installed / "mine").writable() == installed / "mine"
    (installed / "goldens").mkdir()
    assert not paths.goldens().read_only


def test_recording_into_the_installed_goldens_is_refused_before_any_work(
    run_cli, installed, assert_one_line_error
):
    for argv in (
        ["golden", "record", "--arch", "llama"],
        ["golden", "update", "--arch", "llama", "--reason", "why"],
        ["golden", "pull", "http://127.0.0.1:9", "--arch", "llama"],
        ["run", "--arch", "llama", "--strategy", "none", "--record-missing"],
    ):
        result = run_cli(*argv)
        assert_one_line_error(result, "read-only", "--goldens DIR", "$HARNESS_GOLDENS")
    assert not (installed / "harness.db").exists()


def test_recording_with_goldens_dir_writes_there(run_cli, installed):
    mine = installed / "mine"
    result = run_cli("golden", "record", "--arch", "llama", "--goldens", str(mine))
    assert result.code == 0, result.out + result.err
    key = Case("llama").key()
    assert goldens.paths(key, mine)[1].is_file()
    assert goldens.stored_keys(mine) == [key]


def test_obtained_files_of_installed_goldens_go_to_the_user_cache(installed, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(installed / "cache"))
    npz, _ = goldens.obtained_paths("llama-fp32-0", paths.SHIPPED_GOLDENS)
    assert (
        npz == installed / "cache" / "harness" / "obtained" / "llama" / "llama-fp32-0.obtained.npz"
    )
    npz, _ = goldens.obtained_paths("llama-fp32-0", installed / "mine")
    assert npz.parent == installed / "mine" / "llama"


def test_a_local_suite_comes_before_the_shipped_one_and_run_names_its_file(run_cli, elsewhere):
    assert suites.suite_path("smoke") == paths.SHIPPED_SUITES / "smoke.toml"
    (elsewhere / "suites").mkdir()
    local = elsewhere / "suites" / "smoke.toml"
    local.write_text(LLAMA_SUITE)
    (elsewhere / "suites" / "mine.toml").write_text(LLAMA_SUITE)
    assert suites.suite_path("smoke") == local
    assert {"mine", "moe", "smoke"} <= set(suites.known_suites())
    result = run_cli("run", "--suite", "smoke", "--repeats", "0", "--no-goldens")
    assert result.code == 0, result.out + result.err
    assert f"suite smoke: {local}" in result.out
    assert "1 passed" in result.out


def test_unknown_suite_lists_local_and_shipped_suites(run_cli, elsewhere, assert_one_line_error):
    (elsewhere / "suites").mkdir()
    (elsewhere / "suites" / "mine.toml").write_text(LLAMA_SUITE)
    assert_one_line_error(run_cli("run", "--suite", "nope"), "unknown suite 'nope'", "mine", "moe")


def test_version_names_the_harness_mlx_and_mlx_lm(run_cli):
    result = run_cli("--version")
    assert result.code == 0
    line = result.out.strip()
    assert line.startswith(f"mlx-harness {package_version('mlx-harness')} ")
    assert f"mlx {package_version('mlx')}" in line
    assert f"mlx-lm {package_version('mlx-lm')}" in line


def test_only_harness_paths_works_out_where_the_checkout_is():
    """One place for the checkout and the package's root: a second copy would disagree
    with it the day the package is installed rather than run from the checkout."""
    package = REPO / "harness"
    for path in package.rglob("*.py"):
        if path == package / "paths.py":
            continue
        source = path.read_text()
        for climb in ("parents[", ".parent.parent", "harness.__file__"):
            assert climb not in source, f"{path.relative_to(REPO)} computes a path with {climb}"


def test_another_interpreter_imports_the_installed_harness_and_nothing_else(installed, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(installed / "cache"))
    root = paths.import_root()
    assert [p.name for p in root.iterdir()] == ["harness"]
    assert (root / "harness").resolve() == paths.PACKAGE
    assert paths.import_root() == root
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import harness, importlib.util as u; print(harness.__file__, u.find_spec('numpy'))",
        ],
        env={"PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(root / "harness" / "__init__.py"), "None"]
