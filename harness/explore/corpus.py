"""The corpus: shrunk failures kept in the store (`explore_failures`) and replayed first by
the next explore of the same target, hypothesis's own example database beside the store
(what it saw while shrinking), and the corpus written out as a suite."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis.database import DirectoryBasedExampleDatabase

from harness.explore import repro
from harness.explore.learn import location
from harness.explore.search import Found, Target
from harness.explore.space import Example
from harness.records import store


def hypothesis_database(db_path: str | Path) -> DirectoryBasedExampleDatabase:
    """hypothesis's example database for this store: a folder beside it (`harness.db`
    keeps `harness.db.hypothesis/`), so a store and what its searches saw travel together."""
    return DirectoryBasedExampleDatabase(str(Path(f"{db_path}.hypothesis")))


def failure_row(found: Found, command: str, examples_before: int) -> dict:
    """A found failure as a row of `explore_failures` (without run_id and time)."""
    target, example, result = found.target, found.example, found.result
    return {
        "target": target.key,
        "arch": target.arch,
        "strategy": target.strategy,
        "precision": example.precision,
        "scenario": json.dumps(example.scenario),
        "first_seen": json.dumps(found.first_seen.scenario),
        "status": result.status,
        "reason": result.reason,
        "location": json.dumps(location(result)),
        "learned": json.dumps(found.learned),
        "command": command,
        "examples_before": examples_before,
        "shrinks": found.shrinks,
    }


def replays(database, target: Target) -> list[Example]:
    """The stored shrunk failures of this architecture and strategy at a precision the
    target draws, oldest first, each once: what the next search runs before drawing."""
    seen, out = set(), []
    for row in store.explore_failures(database):
        if (row["arch"], row["strategy"]) != (target.arch, target.strategy):
            continue
        if row["precision"] not in target.precisions or (row["precision"], row["scenario"]) in seen:
            continue
        seen.add((row["precision"], row["scenario"]))
        out.append(Example(row["precision"], json.loads(row["scenario"])))
    return out


def export(database, out: Path) -> int:
    """Write every stored failure (each distinct one once) as a suite; how many."""
    seen, cases = set(), []
    for row in store.explore_failures(database):
        ident = (row["arch"], row["strategy"], row["precision"], row["scenario"])
        if ident in seen:
            continue
        seen.add(ident)
        learned = "; ".join(json.loads(row["learned"] or "[]"))
        comment = f"explore run {row['run_id']}: {row['status']}: {row['reason'] or ''}"
        if learned:
            comment += f"\nlearned: {learned}"
        cases.append(repro.suite_case(*ident[:3], json.loads(row["scenario"]), comment))
    header = 'description = "failures harness explore found, shrunk (harness explore export)"\n'
    out.write_text(header + "".join(f"\n{case}" for case in cases))
    return len(cases)
