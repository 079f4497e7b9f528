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
