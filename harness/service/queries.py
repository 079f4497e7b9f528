"""The canned queries (`queries.toml`), with the named set of failing statuses filled in."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

from harness.status import FAILING

QUERIES_FILE = Path(__file__).with_name("queries.toml")


@cache
def canned() -> dict[str, dict]:
    """name -> datasette canned-query metadata (title, description, sql)."""
    failing = ", ".join(f"'{status}'" for status in FAILING)
    queries = tomllib.loads(QUERIES_FILE.read_text())
    return {
        name: {**query, "sql": query["sql"].replace("{failing}", failing).strip()}
        for name, query in queries.items()
    }
