"""Python environments per mlx-lm implementation, cached and keyed by what was installed.

An environment holds one mlx-lm release from the package index with the newest mlx its
requirements allow (a checkout needs none: it runs from PYTHONPATH). It is made with uv
(pip where uv is absent), lives under the user's cache directory (`HARNESS_CACHE_DIR`
overrides it) in a folder named by the hash of its requirements and Python, and is
reused by every later bisect. A folder
becomes an environment only once its `env.json` is written, after the install finished:
an interrupted install is never mistaken for a usable one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs

from harness.errors import HarnessError

MANIFEST = "env.json"
# mlx-lm names no mlx requirement on Linux (only on macOS): the CPU build must be asked for.
PLATFORM_REQUIREMENTS = ("mlx[cpu]",) if sys.platform.startswith("linux") else ()


@dataclass
class Env:
    key: str
    path: Path
    requirements: list[str]
    installer: str  # "uv" or "pip"
    versions: dict[str, str | None] = field(default_factory=dict)  # mlx, mlx-lm
    created: float = 0.0
    used: float = 0.0
    seconds: float = 0.0  # what creating it took
    reused: bool = False
    notes: list[str] = field(default_factory=list)  # e.g. the pip fallback warning

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def manifest(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        for transient in ("reused", "notes"):
            data.pop(transient)
        return data


def cache_dir() -> Path:
    """Where environments live: HARNESS_CACHE_DIR, else the user's cache directory."""
    override = os.environ.get("HARNESS_CACHE_DIR")
    base = Path(override) if override else Path(platformdirs.user_cache_dir("harness"))
    return base / "envs"


def release_requirements(version: str) -> list[str]:
    return [f"mlx-lm=={version}", *PLATFORM_REQUIREMENTS]


def env_key(requirements: list[str]) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    ident = json.dumps({"requirements": requirements, "python": python, "platform": sys.platform})
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def ensure(requirements: list[str]) -> Env:
    """The cached environment for these requirements, created when missing."""
    key = env_key(requirements)
    folder = cache_dir() / key
    # Two bisects (or two test workers) asking for the same environment at once: the
    # second waits for the first's install rather than deleting it half-made.
    with _locked(_lock_path(folder)):
        existing = _read(folder)
        if existing is not None and existing.python.exists():
            existing.used, existing.reused = time.time(), True
            _write(existing)
            return existing
        return _create(key, folder, requirements)


def _lock_path(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.lock")


def _installing(folder: Path) -> bool:
    """Whether another process holds the folder's lock (an install under way)."""
    path = _lock_path(folder)
    if not path.exists():
        return False
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def find_uv() -> str | None:
    """uv from the `uv` package (a dependency), else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _create(key: str, folder: Path, requirements: list[str]) -> Env:
    started = time.time()
    # A folder without its manifest is what an interrupted install left: start over.
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    uv, notes = find_uv(), []
    python = folder / "bin" / "python"
    try:
        if uv is not None:
            _check([uv, "venv", "--quiet", "--python", sys.executable, str(folder)], requirements)
            install = [uv, "pip", "install", "--quiet", "--python", str(python)]
        else:
            notes.append("uv was not found: creating the environment with pip (slower)")
            _check([sys.executable, "-m", "venv", str(folder)], requirements)
            install = [str(python), "-m", "pip", "install", "--quiet"]
        _check([*install, *requirements], requirements)
        versions = _versions(python)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    now = time.time()
    env = Env(
        key,
        folder,
        requirements,
        "uv" if uv else "pip",
        versions,
        created=now,
        used=now,
        seconds=now - started,
        notes=notes,
    )
    _write(env)
    return env


def _check(command: list[str], requirements: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line]
        detail = lines[-1].strip() if lines else f"exit code {done.returncode}"
        raise HarnessError(
            f"could not create an environment with {' '.join(requirements)}: {detail}"
        )


def _versions(python: Path) -> dict[str, str | None]:
    script = (
        "import json, importlib.metadata as m\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in ('mlx', 'mlx-lm', 'transformers')}))"
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _read(folder: Path) -> Env | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        data["path"] = Path(data["path"])
        return Env(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write(env: Env) -> None:
    tmp = env.path / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(env.manifest(), indent=1))
    os.replace(tmp, env.path / MANIFEST)


def cached() -> list[Env]:
    """Every complete cached environment, most recently used first."""
    root = cache_dir()
    if not root.is_dir():
        return []
    envs = [env for folder in root.iterdir() if (env := _read(folder)) is not None]
    return sorted(envs, key=lambda e: e.used, reverse=True)


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def prune(older_than_days: float | None = None) -> list[Env]:
    """Remove cached environments (those unused for `older_than_days`, else all) and any
    half-made folder an interrupted install left; returns the environments removed."""
    root = cache_dir()
    if not root.is_dir():
        return []
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue  # a lock file, kept: removing one another process waits on breaks it
        env = _read(folder)
        if env is None:
            if not _installing(folder):
                shutil.rmtree(folder, ignore_errors=True)
        elif cutoff is None or env.used < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(env)
    return removed
