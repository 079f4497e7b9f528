"""Single-rank references of cases under one mlx-lm implementation, in its own process.

Run as `python -m harness.bisect.probe` by the Python of the implementation's environment
(with this harness on PYTHONPATH, and for a commit its worktree too), so it imports only
rank-side code: mlx, mlx-lm and the harness's case, models and run modules. It reads a
request from stdin (`cases`, `impl` overrides, `out` folder), writes each case's output to
`<out>/<case key>.npz` and prints one JSON line per case (after `PREFIX`: a model may print
too):

- `ok`: the reference ran;
- `skip`: this implementation cannot run the case: the architecture is missing, or
  building or loading it failed on an API the harness uses (never blamed on the model);
- `error`: the model raised while running, or a checkpoint's keys stopped fitting it.

The first line names the versions, so the parent records what really ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PREFIX = "harness-probe: "
# Build or load failures that say "this release has another API", not "the model is wrong".
API_ERRORS = (TypeError, AttributeError, ImportError, NotImplementedError)


def probe(request: dict) -> None:
    import importlib.metadata as metadata

    from harness.case import Case
    from harness.errors import HarnessError, describe
    from harness.models import impl
    from harness.models.checkpoint import CoverageError, skip_reason
    from harness.models.mlx_lm_api import MissingModelType
    from harness.run.rank import forward
    from harness.run.rank.one_case import case_prompts, model_for_case
    from harness.zoo import support

    versions = {name: metadata.version(name) for name in ("mlx", "mlx-lm")}
    _emit({"versions": versions})
    impl.install(request.get("impl") or {})
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    for data in request["cases"]:
        case = Case.from_dict({**data, "strategy": "none"})
        available = support(case.arch)
        # What the release offers the sharded side: old ones lack some shard() / pipeline().
        line = {"key": case.key(), "tp": available.tp, "pp": available.pp}
        reason = available.reason if not available.available else skip_reason(case)
        if reason:
            _emit({**line, "status": "skip", "detail": reason})
            continue
        try:
            model = model_for_case(case, None)
            prompts = case_prompts(case)
        except CoverageError as exc:
            _emit({**line, "status": "error", "detail": str(exc)})
            continue
        except (MissingModelType, HarnessError, *API_ERRORS) as exc:
            detail = f"mlx-lm {versions['mlx-lm']} cannot build it: {describe(exc)}"
            _emit({**line, "status": "skip", "detail": detail})
            continue
        try:
            output, _ = forward.run(model, prompts, case.decode_steps, True, repeats=0)
        except Exception as exc:
            _emit({**line, "status": "error", "detail": f"the model raised {describe(exc)}"})
            continue
        np.savez(out / f"{case.key()}.npz", **output.arrays())
        _emit({**line, "status": "ok"})


def _emit(data: dict) -> None:
    print(PREFIX + json.dumps(data), flush=True)


if __name__ == "__main__":
    probe(json.loads(sys.stdin.read()))
