"""`harness golden pull`: fetch goldens from a running service into a goldens directory.

Every file is downloaded and verified (its sha256 against its sidecar and the index) and
every local conflict found before anything is written, so a failure leaves the directory
as it was. A golden that exists locally with other content is replaced only with a reason,
which is kept in its sidecar's history with the replaced hash (the `golden update` rule).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from harness.errors import HarnessError
from harness.records import goldens
from harness.records.result import now

TIMEOUT_S = 30
# What a case key looks like (`<arch>-<precision>-<digest>`): no separators, no dot-dot.
KEY = re.compile(r"[A-Za-z0-9_]+(-[A-Za-z0-9_.]+)+")


@dataclass
class Pulled:
    key: str
    action: str  # "new" | "same" | "replaced" | "absent" (not on the service)
    sha256: str | None = None


@dataclass
class _Fetched:
    key: str
    payload: bytes
    sidecar: bytes
    sha256: str


def _get(url: str, content_type: str) -> bytes:
    """The body at `url`, which must answer 200 with `content_type`."""
    base = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            got = response.headers.get_content_type()
            if got != content_type:
                raise HarnessError(
                    f"{url} answered with content type {got}, not {content_type}: "
                    f"is {base} a harness service?"
                )
            return response.read()
    except urllib.error.HTTPError as exc:
        raise HarnessError(f"the golden service answered HTTP {exc.code} for {url}") from None
    except urllib.error.URLError as exc:
        raise HarnessError(f"cannot reach the golden service at {base}: {exc.reason}") from None
    except TimeoutError:
        message = f"no answer from the golden service at {base} in {TIMEOUT_S} s"
        raise HarnessError(message) from None


def _json(url: str):
    try:
        return json.loads(_get(url, "application/json"))
    except ValueError:
        raise HarnessError(f"{url} did not answer valid JSON") from None


def index(url: str, archs: list[str] | None = None) -> list[dict]:
    """The service's goldens index (every page of it), optionally for some architectures."""
    params = {"_shape": "objects", "_size": "max"}
    if archs:
        params["arch__in"] = ",".join(archs)
    rows, after, seen = [], None, set()
    while True:
        query = {**params, **({"_next": after} if after else {})}
        page = _json(f"{url}/goldens/goldens.json?{urlencode(query)}")
        listed = page.get("rows") if isinstance(page, dict) else None
        if not isinstance(listed, list) or not all(isinstance(r, dict) for r in listed):
            raise HarnessError(f"{url} answered a goldens index without rows")
        rows += listed
        seen.add(after)
        after = page.get("next")
        if not after or after in seen:  # the last page, or a service paging in circles
            return rows


def _target(key, directory: Path) -> tuple[Path, Path]:
    """Where a listed golden goes; a key that would land outside `directory` is refused."""
    named = isinstance(key, str) and KEY.fullmatch(key)
    npz, sidecar = goldens.paths(key, directory) if named else (directory, directory)
    if not (named and npz.resolve().is_relative_to(directory.resolve())):
        raise HarnessError(
            f"the service lists a golden named {key!r}, which would be written outside "
            f"{directory}; nothing was written"
        )
    return npz, sidecar


def _fetch(url: str, row: dict, directory: Path) -> _Fetched:
    key = row.get("key")
    _target(key, directory)
    payload = _get(f"{url}/-/goldens/{key}.npz", "application/octet-stream")
    sidecar = _get(f"{url}/-/goldens/{key}.json", "application/json")
    digest = hashlib.sha256(payload).hexdigest()
    try:
        meta = json.loads(sidecar)
        recorded = meta.get("sha256"), meta.get("key")
    except (ValueError, AttributeError):
        raise HarnessError(f"golden {key} from {url} has an unreadable sidecar") from None
    if recorded != (digest, key) or row.get("sha256") != digest:
        raise HarnessError(
            f"golden {key} from {url} does not match the sha256 in its sidecar; nothing was written"
        )
    return _Fetched(key, payload, sidecar, digest)


def _local_sha(npz: Path) -> str | None:
    return hashlib.sha256(npz.read_bytes()).hexdigest() if npz.exists() else None


def _with_history(fetched: _Fetched, npz: Path, sidecar: Path, url: str, reason: str) -> bytes:
    """The pulled sidecar, plus the replaced local golden in its history."""
    try:
        previous = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        previous = {}
    meta = json.loads(fetched.sidecar)
    meta["history"] = meta.get("history", []) + [
        {
            "replaced_sha256": _local_sha(npz),
            "replaced_created": previous.get("created"),
            "updated": now(),
            "reason": reason,
            "pulled_from": url,
        }
    ]
    return goldens.sidecar_bytes(meta)


def pull(
    url: str,
    directory: Path,
    keys: set[str] | None = None,
    archs: list[str] | None = None,
    reason: str | None = None,
) -> list[Pulled]:
    """Fetch the goldens the service at `url` lists (only `keys`, or `archs`, when given)
    into `directory`. Replacing a local golden with other content needs a `reason`."""
    url = url.rstrip("/")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise HarnessError(f"'{url}' is not an http:// or https:// URL of a golden service")
    rows = [row for row in index(url, archs) if keys is None or row.get("key") in keys]
    fetched = [_fetch(url, row, directory) for row in rows]
    plan = []
    for item in fetched:
        npz, _ = _target(item.key, directory)
        local = _local_sha(npz)
        action = "new" if local is None else "same" if local == item.sha256 else "replaced"
        plan.append((item, action))
    conflicts = [item.key for item, action in plan if action == "replaced"]
    if conflicts and not reason:
        more = f" and {len(conflicts) - 1} more" if len(conflicts) > 1 else ""
        raise HarnessError(
            f"golden {conflicts[0]}{more} exists in {directory} with other content; "
            "replace with --force --reason 'why' (the replaced hash stays in the sidecar)"
        )
    results = []
    for item, action in plan:
        npz, sidecar = _target(item.key, directory)
        if action != "same":
            data = item.sidecar
            if action == "replaced":
                data = _with_history(item, npz, sidecar, url, reason)
            goldens.write_files(npz, sidecar, item.payload, data)
            for stale in goldens.obtained_paths(item.key, directory):
                stale.unlink(missing_ok=True)
        results.append(Pulled(item.key, action, item.sha256))
    listed = {row.get("key") for row in rows}
    results += [Pulled(key, "absent") for key in sorted((keys or set()) - listed)]
    return results
