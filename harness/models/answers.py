"""What the installed mlx-lm offers for a config, remembered across processes.

Planning a run asks of every architecture whether mlx-lm builds it and shards it (tp, pp)
and whether its caches batch prompts of different lengths. Answering means constructing
the model, and so importing mlx-lm, which loads transformers: about a second before the
first rank could start, in a process that does no model work. The answers are a pure
function of mlx-lm's source and the config asked about, so they are kept in a small JSON
file in the user cache, keyed by a fingerprint of mlx-lm's files and the harness's own
(name, size, mtime of every module, found without importing mlx-lm) and the question.

Never consulted or written in a process where `--impl` replaced a model module
(`harness.models.impl`): its answers are that file's, not the installed mlx-lm's. A cache
that cannot be read or written is ignored: it only saves time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import paths

FILE = "mlx-lm-answers.json"
_answers: dict[str, Any] | None = None


@functools.cache
def fingerprint() -> str | None:
    """A digest of the installed mlx-lm's modules (not imported to compute it), or None
    where it cannot be found."""
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    # The harness's own files too: its preflight rules and zoo configs shape the answers.
    for folder in (root, paths.PACKAGE):
        digest.update(str(folder).encode())
        for file in sorted(folder.rglob("*.py")):
            stat = file.stat()
            digest.update(f"{file.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def remembered(kind: str, config: Any, compute: Callable[[], Any]) -> Any:
    """`compute()`'s JSON-able answer to a question about mlx-lm (`config`: anything
    JSON-able), from the cache when mlx-lm has not changed since it was computed."""
    from harness.models import impl

    base = fingerprint()
    if base is None or impl.installed() or _path() is None:
        return compute()
    about = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    key = f"{base}:{kind}:{about.hexdigest()[:24]}"
    answers = _load()
    if key in answers:
        return answers[key]
    answer = compute()
    answers[key] = answer
    _save(answers)
    return answer


def _path() -> Path | None:
    """The cache file; None under an environment without the harness's own dependencies
    (a bisect's mlx-lm release: platformdirs names the user cache)."""
    try:
        return paths.user_cache() / FILE
    except ImportError:
        return None


def _load() -> dict[str, Any]:
    global _answers
    if _answers is None:
        try:
            loaded = json.loads(_path().read_text())
            _answers = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _answers = {}
    return _answers


def _save(answers: dict[str, Any]) -> None:
    """Written whole through a temporary file: concurrent runs each leave a valid file."""
    try:
        folder = _path().parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(answers, fh)
        os.replace(temporary, _path())
    except OSError:
        pass
