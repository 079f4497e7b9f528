"""The package as users install it: the sdist built, the wheel built from it and installed
alone into a fresh virtual environment, every command run from an empty directory (no
checkout in sight). pip's cache keeps this to a few tens of seconds."""

import sqlite3
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One worker under -n: the module builds and installs the wheel once for all its tests.
pytestmark = [pytest.mark.wheel, pytest.mark.xdist_group("wheel")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # The distribution is mlx-harness ("harness" on the index is another project).
    (found,) = dist.glob("mlx_harness-*.whl")
    assert list(dist.glob("mlx_harness-*.tar.gz")), "the sdist is built too"
    return found


@pytest.fixture(scope="module")
def harness(wheel, tmp_path_factory) -> Path:
    """The `harness` of a fresh environment holding the wheel and its dependencies."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=True)
    pip = subprocess.run(
        [str(env / "bin" / "pip"), "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    return env / "bin" / "harness"


@pytest.fixture
def empty(tmp_path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def run(harness: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(harness), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_ships_every_suite_and_golden_of_the_checkout(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("suites", "goldens"):
        expected = {
            f"harness/data/{p.relative_to(REPO).as_posix()}"
            for p in (REPO / folder).rglob("*")
            if p.is_file() and ".obtained." not in p.name
        }
        assert expected and expected <= names, sorted(expected - names)[:5]
    assert not [n for n in names if ".obtained." in n or n.startswith("tests/")]


def test_the_installed_harness_runs_a_suite_against_its_goldens(harness, empty):
    version = run(harness, empty, "--version")
    assert version.returncode == 0 and version.stdout.startswith("mlx-harness "), version.stderr
    result = run(harness, empty, "run", "--suite", "smoke", "--repeats", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    suite_line, goldens_line = result.stdout.splitlines()[:2]
    assert suite_line.endswith("harness/data/suites/smoke.toml"), suite_line
    assert goldens_line.endswith("harness/data/goldens (shipped, read-only)"), goldens_line
    with sqlite3.connect(empty / "harness.db") as db:
        statuses = {row[0] for row in db.execute("select golden from cases")}
    assert statuses == {"match"}, statuses
    verify = run(harness, empty, "golden", "verify", "--suite", "smoke")
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    assert run(harness, empty, "archs").returncode == 0


def test_the_installed_goldens_are_read_only_and_goldens_dir_takes_new_ones(harness, empty):
    refused = run(harness, empty, "golden", "record", "--suite", "smoke")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "read-only" in refused.stderr, refused.stderr
    recorded = run(harness, empty, "golden", "record", "--arch", "llama", "--goldens", "mine")
    assert recorded.returncode == 0, recorded.stderr
    assert list((empty / "mine" / "llama").glob("llama-*.npz"))


def test_the_installed_harness_creates_no_database_when_reading(harness, empty):
    result = run(harness, empty, "report", "--db", "typo.db")
    assert result.returncode == 2 and "no database at typo.db" in result.stderr
    assert not (empty / "typo.db").exists()
