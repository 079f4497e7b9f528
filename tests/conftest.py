import os

import pytest
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


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "results.db")
