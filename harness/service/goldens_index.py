"""The goldens index: one row per stored golden, read from its sidecar, served as the
`goldens` table of the service and refreshed whenever a golden file changes on disk."""

from __future__ import annotations

import json
from pathlib import Path

from harness.records import goldens

# The files a golden consists of, by the extension a download URL names.
CONTENT_TYPES = {"npz": "application/octet-stream", "json": "application/json"}
COLUMNS = {
    "key": str,
    "arch": str,
    "precision": str,
    "dtype": str,
    "sha256": str,
    "mlx_lm_version": str,
    "mlx_version": str,
    "created": str,
    "size": int,
    "sidecar_size": int,
    "updates": int,
    "problem": str,
}


def golden_file(directory: Path, key: str, ext: str) -> Path | None:
    """The file of a stored golden (`npz` or its `json` sidecar), None unless it exists
    inside `directory` under a key the index lists."""
    if ext not in CONTENT_TYPES or key not in goldens.stored_keys(directory):
        return None
    npz, sidecar = goldens.paths(key, directory)
    path = npz if ext == "npz" else sidecar
    return path if path.is_file() else None


def signature(directory: Path) -> tuple:
    """Changes whenever a golden or sidecar is written, replaced or removed."""
    files = sorted(directory.glob("*/*.npz")) + sorted(directory.glob("*/*.json"))
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())


def scan(directory: Path) -> list[dict]:
    """One row per golden; a golden whose sidecar cannot be read is listed with its problem
    rather than left out, so the index never hides a broken golden."""
    rows = []
    for key in goldens.stored_keys(directory):
        npz, sidecar = goldens.paths(key, directory)
        row = dict.fromkeys(COLUMNS)
        row.update(key=key, arch=npz.parent.name, sidecar_size=sidecar.stat().st_size)
        row["size"] = npz.stat().st_size if npz.is_file() else None
        try:
            meta = json.loads(sidecar.read_text())
            row.update({k: meta.get(k) for k in COLUMNS if k in meta and k != "key"})
            row["updates"] = len(meta.get("history", []))
        except (OSError, ValueError, AttributeError) as exc:
            row["problem"] = f"unreadable sidecar: {exc}"
        if row["size"] is None:
            row["problem"] = "the .npz file is missing"
        rows.append(row)
    return rows
