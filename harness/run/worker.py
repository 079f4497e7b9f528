"""The program every rank runs under `mlx.launch`: all cases of a job, one after another.

Protocol with the parent (harness.launcher), through files in the job folder:
- `job.json`: the cases (with their indices), capture flag, timing repeats;
- `rank{r}.stderr` / `rank{r}.stdout`: this rank's output, fd-level, so a segfault's
  faulthandler dump lands there too;
- `case{i}.rank{r}.start`: written when the rank starts case i (the watchdog's clock);
- `case{i}.rank{r}.npz` then `case{i}.rank{r}.json`: the outputs, then the status; the
  JSON is written last, atomically, and marks the case done on this rank.
A case that raises is recorded in its JSON and the rank exits: its peers may already be
blocked in a collective, and mlx.launch stops them when one rank exits.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import traceback
from pathlib import Path

import mlx.core as mx
import numpy as np


def _redirect(job: Path, rank: int) -> None:
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(job / f"rank{rank}.{name}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    faulthandler.enable(file=sys.stderr, all_threads=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    job = Path(argv[0])
    group = mx.distributed.init()
    rank = group.rank()
    _redirect(job, rank)
    spec = json.loads((job / "job.json").read_text())

    from harness.case import Case
    from harness.errors import describe
    from harness.run.execute import run_case

    for entry in spec["cases"]:
        index, case = entry["index"], Case.from_dict(entry["case"])
        stem = f"case{index}.rank{rank}"
        (job / f"{stem}.start").touch()
        print(f"case {index}: {case.label()}", file=sys.stderr, flush=True)
        try:
            output, timings = run_case(case, group, spec["capture"], spec["repeats"])
        except BaseException as exc:  # recorded for the parent, then this rank ends
            detail = "".join(traceback.format_exception(exc))
            print(detail, file=sys.stderr, flush=True)
            _write_json(job / f"{stem}.json", {"status": "error", "error": describe(exc)})
            os._exit(1)
        with open(job / f"{stem}.npz.tmp", "wb") as fh:
            np.savez(fh, **output.arrays())
        os.replace(job / f"{stem}.npz.tmp", job / f"{stem}.npz")
        _write_json(job / f"{stem}.json", {"status": "ok", "timings": timings.to_dict()})
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
