"""Where the harness finds things: its own source, the suites and goldens it ships, and a
user's own (`./suites`, `./goldens`, `--goldens DIR`, `$HARNESS_GOLDENS`). The one place
that knows the layout; standard library and platformdirs only, so every layer may ask.

A wheel ships the checkout's top-level `suites/` and `goldens/` as `harness/data/` (copied
at build time by setup.py). Run from a checkout (an editable install, or the checkout on
PYTHONPATH) the harness reads the checkout's own folders, so a golden recorded there lands
in the checkout; installed from a wheel it reads its packaged copies, read-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from platformdirs import user_cache_path

from harness.errors import HarnessError

PACKAGE = Path(__file__).resolve().parent
# What another interpreter needs on PYTHONPATH to import this harness (ranks under
# `--python`, bisect probes under another mlx-lm): the folder that holds the package.
IMPORT_ROOT = PACKAGE.parent
# The source checkout the harness runs from, or None when it is installed (a wheel in
# site-packages has no pyproject.toml beside it).
CHECKOUT: Path | None = (
    IMPORT_ROOT
    if (IMPORT_ROOT / "pyproject.toml").is_file() and (IMPORT_ROOT / "suites").is_dir()
    else None
)
GOLDENS_ENV = "HARNESS_GOLDENS"


def _shipped(name: str) -> Path:
    if CHECKOUT is not None:
        return CHECKOUT / name
    # An installed wheel is unpacked on disk, so the package's data is a real folder.
    return Path(str(resources.files(__package__).joinpath("data", name)))


SHIPPED_SUITES = _shipped("suites")
SHIPPED_GOLDENS = _shipped("goldens")


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
    """A goldens directory and why it was chosen (said in messages)."""

    directory: Path
    source: str  # "--goldens", "$HARNESS_GOLDENS", "./goldens" or "shipped"

    @property
    def read_only(self) -> bool:
        """The goldens an installed package ships: never written (a reinstall would lose
        them, and site-packages may not be writable)."""
        return self.source == "shipped" and CHECKOUT is None

    def writable(self) -> Path:
        """The directory, for a command that records goldens; refused when read-only."""
        if self.read_only:
            raise HarnessError(
                f"the goldens shipped with the installed harness ({self.directory}) are "
                "read-only; record into your own with --goldens DIR (or $HARNESS_GOLDENS, or "
                "a goldens/ folder in the working directory)"
            )
        return self.directory


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
    return Goldens(SHIPPED_GOLDENS, "shipped")


def obtained_root(directory: Path) -> Path:
    """Where `obtained` files (a fresh reference that did not match) go: beside the goldens,
    except for an installed package's read-only ones (then the user's cache)."""
    if CHECKOUT is None and directory.resolve() == SHIPPED_GOLDENS.resolve():
        return user_cache_path("harness") / "obtained"
    return directory
