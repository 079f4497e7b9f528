"""Where the harness finds things: its own source, the suites and goldens it ships, and a
user's own (`./suites`, `./goldens`, `--goldens DIR`, `$HARNESS_GOLDENS`). The one place
that knows the layout; standard library only at import (platformdirs where a cache path is
asked for), so every layer may ask, on a rank too, under an environment of another mlx-lm
release that has nothing of the harness's own dependencies.

A wheel ships the checkout's top-level `suites/` and `goldens/` as `harness/data/` (copied
at build time by setup.py). Run from a checkout (an editable install, or the checkout on
PYTHONPATH) the harness reads the checkout's own folders, so a golden recorded there lands
in the checkout; installed from a wheel it reads its packaged copies, read-only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from harness.errors import HarnessError

PACKAGE = Path(__file__).resolve().parent
# The source checkout the harness runs from, or None when it is installed (a wheel in
# site-packages has no pyproject.toml beside it).
CHECKOUT: Path | None = (
    PACKAGE.parent
    if (PACKAGE.parent / "pyproject.toml").is_file() and (PACKAGE.parent / "suites").is_dir()
    else None
)
GOLDENS_ENV = "HARNESS_GOLDENS"


def user_cache() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("harness")


def _shipped(name: str) -> Path:
    if CHECKOUT is not None:
        return CHECKOUT / name
    # An installed wheel is unpacked on disk, so the package's data is a real folder.
    return Path(str(resources.files(__package__).joinpath("data", name)))


SHIPPED_SUITES = _shipped("suites")
SHIPPED_GOLDENS = _shipped("goldens")


def import_root() -> Path:
    """What another interpreter (ranks under `--python`, bisect references under
    another mlx-lm) puts on PYTHONPATH to import this harness and nothing else of this
    environment: the checkout, or for an installed package a folder holding only a link
    to it. site-packages itself would bring this environment's mlx and mlx-lm along and
    shadow the other interpreter's own (PYTHONPATH comes before its site-packages)."""
    if CHECKOUT is not None:
        return CHECKOUT
    digest = hashlib.sha256(str(PACKAGE).encode()).hexdigest()[:12]
    root = user_cache() / "import" / digest
    link = root / "harness"
    if not link.exists():
        root.mkdir(parents=True, exist_ok=True)
        fresh = root / f".harness-{os.getpid()}"
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(PACKAGE, target_is_directory=True)
        os.replace(fresh, link)  # atomic: two processes may make it at once
    return root


def suite_dirs() -> list[Path]:
    """Where a suite is found by name, first match wins: the working directory's
    `suites/`, then the shipped ones."""
    found: list[Path] = []
    for folder in (Path.cwd() / "suites", SHIPPED_SUITES):
        if folder.is_dir() and folder.resolve() not in {f.resolve() for f in found}:
            found.append(folder)
    return found


@dataclass(frozen=True)
class Goldens:
    """A goldens directory and why it was chosen (`harness run` and `golden verify` say)."""

    directory: Path
    source: str  # "--goldens", "$HARNESS_GOLDENS", "./goldens", "checkout" or "shipped"

    @property
    def read_only(self) -> bool:
        """The goldens an installed package ships: never written (a reinstall would lose
        them, and site-packages may not be writable)."""
        return self.source == "shipped"

    def writable(self) -> Path:
        """The directory, for a command that records goldens; refused when read-only."""
        if self.read_only:
            raise HarnessError(
                f"the goldens shipped with the installed harness ({self.directory}) are "
                "read-only; record into your own with --goldens DIR (or $HARNESS_GOLDENS, or "
                "a goldens/ folder in the working directory)"
            )
        return self.directory

    def describe(self) -> str:
        return f"goldens: {self.directory} ({self.source}{', read-only' if self.read_only else ''})"


def goldens(option: Path | None = None) -> Goldens:
    """The goldens directory a command uses: `--goldens DIR`, else `$HARNESS_GOLDENS`, else
    the working directory's `goldens/` when there is one, else the shipped goldens."""
    if option is not None:
        return Goldens(option, "--goldens")
    if os.environ.get(GOLDENS_ENV):
        return Goldens(Path(os.environ[GOLDENS_ENV]), f"${GOLDENS_ENV}")
    local = Path.cwd() / "goldens"
    if local.is_dir():
        return Goldens(local, "./goldens")
    return Goldens(SHIPPED_GOLDENS, "checkout" if CHECKOUT is not None else "shipped")


def obtained_root(directory: Path) -> Path:
    """Where `obtained` files (a fresh reference that did not match) go: beside the goldens,
    except for an installed package's read-only ones (then the user's cache)."""
    if CHECKOUT is None and directory.resolve() == SHIPPED_GOLDENS.resolve():
        return user_cache() / "obtained"
    return directory
