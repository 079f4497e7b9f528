"""The published releases of mlx-lm, from the package index the installers are configured
with, through its simple API in JSON (PEP 691 / 700): yanked releases left out,
pre-releases too unless named."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from packaging.version import InvalidVersion, Version

from harness.errors import HarnessError

PACKAGE = "mlx-lm"
DEFAULT_INDEX = "https://pypi.org/simple"
# The variables uv and pip read, in the order they take precedence.
INDEX_VARIABLES = ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL")
ACCEPT = "application/vnd.pypi.simple.v1+json"


def index_url() -> str:
    for name in INDEX_VARIABLES:
        if os.environ.get(name):
            return os.environ[name].rstrip("/")
    return DEFAULT_INDEX


def published(package: str = PACKAGE, timeout: float = 20.0) -> tuple[list[str], set[str]]:
    """(every release, oldest first; the yanked ones) as the index lists them."""
    url = f"{index_url()}/{package}/"
    request = urllib.request.Request(url, headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        raise HarnessError(f"the package index at {url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HarnessError(f"cannot reach the package index at {url}: {reason}") from None
    except ValueError:
        raise HarnessError(f"the package index at {url} did not answer in JSON") from None
    files: dict[str, list[bool]] = {}
    for entry in data.get("files", []):
        version = _version_of(entry.get("filename", ""), package)
        if version is not None:
            files.setdefault(version, []).append(bool(entry.get("yanked")))
    versions = data.get("versions") or list(files)
    # A release is yanked when every one of its files is.
    yanked = {v for v, flags in files.items() if flags and all(flags)}
    return sorted(_valid(versions), key=Version), yanked


def _version_of(filename: str, package: str) -> str | None:
    stem = package.replace("-", "_")
    for suffix in (".tar.gz", ".zip", ".whl"):
        if filename.endswith(suffix):
            name = filename.removesuffix(suffix)
            for prefix in (f"{stem}-", f"{package}-"):
                if name.startswith(prefix):
                    return name.removeprefix(prefix).split("-", 1)[0]
    return None


def _valid(versions: list[str]) -> list[str]:
    valid = []
    for v in versions:
        try:
            Version(v)
        except InvalidVersion:
            continue
        valid.append(v)
    return valid


def check_release(version: str) -> None:
    """A published, not yanked release, else one sentence."""
    versions, yanked = published()
    _check(version, "release", versions, yanked)


def _check(version: str, name: str, versions: list[str], yanked: set[str]) -> None:
    if version not in versions:
        near = [v for v in versions if v not in yanked and not Version(v).is_prerelease][-8:]
        raise HarnessError(
            f"{PACKAGE} has no release '{version}' ({name}) on {index_url()}; "
            f"latest: {', '.join(near)}"
        )
    if version in yanked:
        raise HarnessError(f"{PACKAGE} {version} ({name}) was yanked from {index_url()}")


def between(good: str, bad: str, inverse: bool = False) -> list[str]:
    """The releases from `good` to `bad` inclusive, oldest first.

    Normally good is the older one (find what broke); with `inverse` bad is the older one
    (find what fixed). Yanked releases and pre-releases in between are left out."""
    versions, yanked = published()
    for name, version in (("--good", good), ("--bad", bad)):
        _check(version, name, versions, yanked)
    old, new = (bad, good) if inverse else (good, bad)
    if Version(old) >= Version(new):
        if inverse:
            raise HarnessError(
                f"with --inverse the bad release must be older than the good one, "
                f"got bad {bad} and good {good}"
            )
        raise HarnessError(
            f"the good release must be older than the bad one, got good {good} and bad {bad} "
            "(use --inverse to find the release that fixed something)"
        )
    return [
        v
        for v in versions
        if Version(old) <= Version(v) <= Version(new)
        and v not in yanked
        and (v in (old, new) or not Version(v).is_prerelease)
    ]
