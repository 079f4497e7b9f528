"""Single-rank references of cases under whichever mlx-lm this rank's interpreter imports:
a release's environment, a source tree first on PYTHONPATH (a commit), or a model file
installed over one module (`harness.models.impl`). The `references` job of bisect and
diff-impl, on one rank launched under that interpreter and watched as a run's ranks are.

Each case yields its `Start` (the watchdog's clock and the stack dump) and its
`Reference`, whose status (a `harness.status.ReferenceStatus`) is one of:

- `ok`: the reference ran (its arrays travel with the frame);
- `skip`: this implementation cannot run the case: the architecture is missing, or
  building or loading it failed on an API the harness uses (never blamed on the model);
- `crash`: the model raised while running, or a checkpoint's keys stopped fitting it.

A rank that dies or hangs inside a case is the watcher's to report (crash, timeout).
Every Reference names the versions that really ran: a source tree on PYTHONPATH has no
package metadata of its own, and the installed mlx-lm's would name the wrong one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from harness.run.protocol import Message, Reference, Start
from harness.status import ReferenceStatus

# Build or load failures that say "this release has another API", not "the model is wrong".
API_ERRORS = (TypeError, AttributeError, ImportError, NotImplementedError)


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    import mlx_lm

    own = getattr(mlx_lm, "__version__", None) or metadata.version("mlx-lm")
    return {"mlx": metadata.version("mlx"), "mlx-lm": own}


def run_on_rank(spec: dict, group) -> Iterator[tuple[Message, dict[str, np.ndarray]]]:
    from harness.case import Case
    from harness.models import impl

    impl.install(spec.get("impl") or {})
    ran = versions()
    for entry in spec["cases"]:
        index, case = entry["index"], Case.from_dict({**entry["case"], "strategy": "none"})
        yield Start("reference", [index], scale=case.watchdog_scale), {}
        status, detail, arrays, sharding = _reference(case, ran["mlx-lm"])
        yield Reference(index, status, detail, versions=ran, sharding=sharding), arrays


def _reference(case, version: str) -> tuple[ReferenceStatus, str | None, dict, list[str]]:
    """(status, detail, arrays, what the architecture offers the sharded side here)."""
    from harness.errors import HarnessError, describe
    from harness.models.checkpoint import CoverageError, skip_reason
    from harness.models.mlx_lm_api import MissingModelType
    from harness.run.rank import forward
    from harness.run.rank.one_case import case_prompts, model_for_case
    from harness.zoo import support

    available = support(case.arch)
    # What the release offers the sharded side: old ones lack some shard() / pipeline().
    sharding = [s for s in ("tp", "pp") if getattr(available, s)]
    reason = available.reason if not available.available else skip_reason(case)
    if reason:
        return ReferenceStatus.SKIP, reason, {}, sharding
    try:
        model = model_for_case(case, None)
        prompts = case_prompts(case)
    except CoverageError as exc:
        return ReferenceStatus.CRASH, str(exc), {}, sharding
    except (MissingModelType, HarnessError, *API_ERRORS) as exc:
        return (
            ReferenceStatus.SKIP,
            f"mlx-lm {version} cannot build it: {describe(exc)}",
            {},
            sharding,
        )
    try:
        output, _ = forward.run(model, prompts, case.decode_steps, True, repeats=0)
    except Exception as exc:
        return ReferenceStatus.CRASH, f"the model raised {describe(exc)}", {}, sharding
    return ReferenceStatus.OK, None, output.arrays(), sharding
