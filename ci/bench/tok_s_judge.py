"""Benchmark, not a test: replay `harness compare` (harness.records.rundiff, the code the CLI
and the compare page run) over a database of runs of one setup, each run against the one
before, and count the tok/s regressions and suspects it reports per run. Run it on the
database ci/bench/tok_s_noise.sh fills: unchanged runs must report none, the runs where one
architecture was slowed must report that architecture and no other.

Usage: .venv/bin/python ci/bench/tok_s_judge.py DB   (from the repository root)
"""

from __future__ import annotations

import sys

from harness.records import rundiff, store


def main(path: str) -> None:
    db = rundiff.open_existing(path)
    ids = [
        row["id"]
        for row in db.query("select id from runs where kind = 'run' and finished is not null")
    ]
    for before, run_id in zip(ids, ids[1:], strict=False):
        run, _ = store.get_run(db, run_id)
        result = rundiff.compare_stored(db, str(before), path, db, str(run_id), path)
        flagged = sorted(
            {
                c.label.split("/")[0] + "/" + c.label.split("/")[2] + " " + c.what
                for c in result.changes
                if c.regressed
            }
        )
        suspects = sorted(
            {
                c.label.split("/")[0] + "/" + c.label.split("/")[2] + " " + c.what
                for c in result.changes
                if "suspect" in c.what
            }
        )
        judged = not any("not judged" in note for note in result.notes)
        print(
            f"run {run_id} (finished {run['finished'][11:19]}):"
            f" {'judged' if judged else 'not judged'}, {len(flagged)} regression(s) {flagged},"
            f" {len(suspects)} suspect(s) {suspects}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
