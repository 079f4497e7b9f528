"""What every command-line test checks of a user mistake."""

from __future__ import annotations


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit code 2 and one line on stderr, `error: ...` holding every fragment, with no
    traceback anywhere."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = [line for line in result.err.strip().splitlines() if line]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.err + result.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def sigterm_once_stored(argv: list[str], db_path, table: str, least: int) -> tuple[int, str, int]:
    """Run `harness ARGV` in a subprocess, send it SIGTERM once `table` of its database
    holds `least` rows, and return its exit code, its stderr and how many rows there were."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from harness.records import store

    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, rows = time.monotonic() + 240, 0
    while time.monotonic() < deadline and rows < least:
        time.sleep(0.3)
        try:
            rows = len(list(store.open_db(db_path).query(f"select id from {table}")))
        except Exception:  # the database is being created
            rows = 0
    assert rows >= least, f"fewer than {least} rows stored in {table}"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    return proc.returncode, err, rows
