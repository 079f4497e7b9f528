import os
from pathlib import Path

import pytest
from helpers import cli as cli_helpers
from helpers import service as service_helpers
from hypothesis import settings

from harness import cli

# Derandomized and without an example database: property outputs must agree across ranks
# and runs. `ci` is the default; HYPOTHESIS_PROFILE=thorough runs more examples.
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=None)
settings.register_profile(
    "thorough", max_examples=300, derandomize=True, database=None, deadline=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_cli(capsys):
    """Run `harness ARGS...` in-process; returns exit code, stdout and stderr."""

    def invoke(*args: str) -> CliResult:
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session")
def children():
    """`children(parent=None)`: the live children of `parent` (default: this process), as
    pid -> (command line, environment), read from /proc."""
    return _children


def _children(parent: int | None = None) -> dict[int, tuple[bytes, bytes]]:
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == (parent or os.getpid()):
                found[int(stat.parent.name)] = (
                    (stat.parent / "cmdline").read_bytes(),
                    (stat.parent / "environ").read_bytes(),
                )
        except OSError:
            continue
    return found


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "results.db")


@pytest.fixture(scope="session")
def sigterm_once_stored():
    """`sigterm_once_stored(argv, db, table, least)`: `harness ARGV` in a subprocess, sent
    SIGTERM once `table` holds `least` rows; returns (exit code, stderr, rows seen)."""
    return cli_helpers.sigterm_once_stored


@pytest.fixture(scope="session")
def assert_one_line_error():
    """`assert_one_line_error(result, *fragments)`: a user mistake is exit 2 and one line,
    `error: ...` holding every fragment, with no traceback."""
    return cli_helpers.assert_one_line_error


@pytest.fixture(scope="session")
def mlx_lm_sources():
    """The installed mlx-lm's sources as test material (`helpers/mlx_lm_sources.py`): git
    repositories of them, model files that differ in one place."""
    from helpers import mlx_lm_sources  # imports mlx-lm: only for the tests that ask

    return mlx_lm_sources


@pytest.fixture(scope="session")
def package_index():
    """A package index on loopback for mlx-lm releases (`helpers/package_index.py`)."""
    from helpers import package_index

    return package_index


# `harness serve` in a subprocess and HTTP against it (`helpers/service.py`).
@pytest.fixture(scope="session")
def start_service():
    return service_helpers.start_service


@pytest.fixture(scope="session")
def stop():
    return service_helpers.stop


@pytest.fixture(scope="session")
def get():
    return service_helpers.get


@pytest.fixture(scope="session")
def get_json():
    return service_helpers.get_json


@pytest.fixture(scope="session")
def record_run():
    """`record_run(db_path, suite, outcomes, ranks=2)`: see `_record_run`."""
    return _record_run


def _record_run(db_path, suite: str, outcomes: list[dict], ranks: int = 2) -> int:
    """Store one run whose cases have the given outcomes without running anything: each
    outcome names `arch` and may set status, diagnoses, reason, golden, strategy and
    `seconds` (the prefill and decode samples of rank 0). Returns the run id."""
    from harness.case import Case
    from harness.records import store
    from harness.records.goldens import GoldenCheck
    from harness.records.result import CaseResult
    from harness.status import FAILING

    db = store.open_db(db_path)
    run_id = store.start_run(db, "run", suite, ranks, None, None, ["harness", "run"])
    for index, outcome in enumerate(outcomes):
        case = Case(outcome["arch"], strategy=outcome.get("strategy", "tp"))
        prefill, decode = outcome.get("seconds", ([0.010] * 3, [0.002] * 3))
        timings = {
            "prefill_tok_s": 16 / sorted(prefill)[len(prefill) // 2],
            "decode_tok_s": 2 / sorted(decode)[len(decode) // 2],
            "prefill_samples": prefill,
            "decode_samples": decode,
            "peak_memory": 1,
        }
        golden = outcome.get("golden")
        result = CaseResult(
            index,
            case,
            ranks,
            outcome.get("status", "pass"),
            outcome.get("reason"),
            diagnoses=outcome.get("diagnoses", []),
            rank_timings={0: timings},
            duration=0.5,
            golden=GoldenCheck(case.key(), golden) if golden else None,
        )
        store.record(db, run_id, result)
    failed = any(o.get("status") in FAILING for o in outcomes)
    store.finish_run(db, run_id, "failed" if failed else "passed")
    return run_id


@pytest.fixture(scope="session")
def record_bench_run():
    """`record_bench_run(db_path, suite, outcomes, ranks=2)`: see `_record_bench_run`."""
    return _record_bench_run


STEADY_TRIALS = {
    "prompt": [1000.0, 1050.0, 980.0, 1020.0, 1010.0],
    "generation": [50.0, 52.0, 49.0, 51.0, 50.5],
}


def _record_bench_run(db_path, suite: str | None, outcomes: list[dict], ranks: int = 2) -> int:
    """Store one bench run without running anything: each outcome names `arch` and may set
    strategy, status, reason and rank 0's `prompt` and `generation` tok/s trials (every
    rank gets the same; a status other than ok has no trials). Returns the run id."""
    from harness.case import BenchCase, Case
    from harness.records import store
    from harness.records.bench import BenchResult
    from harness.status import BenchStatus

    db = store.open_db(db_path)
    run_id = store.start_run(db, "bench", suite, ranks, None, None, ["harness", "bench"])
    for index, outcome in enumerate(outcomes):
        bench = BenchCase(Case(outcome["arch"], strategy=outcome.get("strategy", "tp")), 32, 8)
        status = outcome.get("status", BenchStatus.OK)
        prompt = outcome.get("prompt", STEADY_TRIALS["prompt"])
        generation = outcome.get("generation", STEADY_TRIALS["generation"])
        trials = (
            [
                {
                    "rank": rank,
                    "trial": t,
                    "prompt_tps": p,
                    "generation_tps": g,
                    "ttft_s": 32 / p,
                    "peak_memory_gb": 0.01,
                    "wall_s": 0.2,
                }
                for rank in range(ranks)
                for t, (p, g) in enumerate(zip(prompt, generation, strict=True))
            ]
            if status == BenchStatus.OK
            else []
        )
        reason = outcome.get("reason")
        store.record(db, run_id, BenchResult(index, bench, ranks, status, reason, trials))
    failed = any(o.get("status", BenchStatus.OK) != BenchStatus.OK for o in outcomes)
    store.finish_run(db, run_id, "failed" if failed else "passed")
    return run_id


def _pytest_junit(tmp_path) -> dict[str, set[str]]:
    """What pytest's own --junitxml writes: element name -> attribute names, over a pass
    with a suite property, a failure with stderr (kept as system-err), a skip and an error."""
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    (tmp_path / "test_sample.py").write_text(
        "import sys, pytest\n"
        "@pytest.fixture\n"
        "def broken():\n    raise RuntimeError('setup')\n"
        "def test_pass(record_testsuite_property):\n"
        "    record_testsuite_property('mlx_version', '0.32')\n"
        "def test_fail():\n    print('rank 1 stderr', file=sys.stderr)\n    assert 1 == 2\n"
        "def test_skip():\n    pytest.skip('not here')\n"
        "def test_error(broken):\n    pass\n"
    )
    xml = tmp_path / "pytest.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "junit_logging=system-err",
            f"--junitxml={xml}",
        ],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    vocabulary: dict[str, set[str]] = {}
    for element in ET.parse(xml).getroot().iter():
        vocabulary.setdefault(element.tag, set()).update(element.attrib)
    return vocabulary


@pytest.fixture(scope="session")
def assert_junit_like_pytest(tmp_path_factory):
    """`assert_junit_like_pytest(xml_text)`: every element and attribute of the document is
    one pytest's own JUnit XML uses, nested the way pytest nests them."""
    vocabulary = _pytest_junit(tmp_path_factory.mktemp("pytest-junit"))
    return lambda xml_text: _assert_junit_like(xml_text, vocabulary)


def _assert_junit_like(xml_text: str, vocabulary: dict[str, set[str]]) -> None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml_text)
    assert root.tag == "testsuites" and [c.tag for c in root] == ["testsuite"]
    for element in root.iter():
        assert element.tag in vocabulary, element.tag
        assert set(element.attrib) <= vocabulary[element.tag], (element.tag, element.attrib)
    for case in root.iter("testcase"):
        assert {"classname", "name", "time"} <= set(case.attrib)
