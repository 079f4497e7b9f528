"""Where a result came from: the harness's git sha, package versions, Python, platform."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version

from harness.paths import CHECKOUT, PACKAGE

# The distribution's name on the package index ("harness" there is an unrelated project);
# the import package and the command are `harness`.
DISTRIBUTION = "mlx-harness"


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The checkout's commit; None for an installed package (a git folder around
    site-packages, such as a project holding its virtual environment, is not ours)."""
    if CHECKOUT is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment() -> dict:
    return {
        "harness_sha": git_sha(),
        "harness_version": package_version(DISTRIBUTION),
        "mlx_version": package_version("mlx"),
        "mlx_lm_version": package_version("mlx-lm"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def source_digest() -> str:
    """A digest of the harness's own source files: ranks on different hosts must run the
    same harness, whatever its version string or git state says."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
