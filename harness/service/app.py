"""The datasette app of `harness serve`: which files it serves, its metadata (canned queries
as data), its settings (read-only, no arbitrary SQL unless asked) and the socket it listens on.

Databases are served mutable, never `immutable`: a `harness run` may be writing to them (WAL),
and datasette opens mutable files `mode=ro`, so the service itself can never write them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn
from datasette.app import Datasette
from datasette.plugins import pm

from harness.errors import HarnessError
from harness.records import store
from harness.service import plugin
from harness.service.queries import canned

# Names datasette or the service use for databases of their own.
RESERVED = {plugin.GOLDENS_DB, "_internal", "_memory"}
TEMPLATES = Path(__file__).with_name("templates")


def check_database(path: Path) -> str:
    """The name the database is served under (its file stem), once it is a harness database
    with every migration (the canned queries read the newest tables)."""
    store.require_current(path)
    if path.stem in RESERVED:
        raise HarnessError(f"a database may not be named '{path.stem}'; rename {path}")
    return path.stem


def metadata(names: list[str]) -> dict:
    """What datasette shows and serves at /-/metadata.json: never a path of this machine."""
    return {
        "title": "harness: results and goldens",
        "description_html": (
            "Runs and case results of sharded MLX inference tests, and the stored goldens. "
            '<a href="/">The HUD</a> shows each suite\'s latest run; canned queries answer '
            "JSON with <code>?_shape=array</code>."
        ),
        "databases": {
            **{name: {"queries": canned()} for name in names},
            plugin.GOLDENS_DB: {
                "description": "Index of the goldens this service holds; each key links to "
                "its download (/-/goldens/KEY.npz, the sidecar at /-/goldens/KEY.json) and to "
                "the case's page.",
                "tables": {"goldens": {"sort": "key", "facets": ["arch", "precision"]}},
            },
        },
    }


def build(databases: list[Path], goldens_dir: Path, allow_sql: bool = False) -> Datasette:
    """A datasette serving `databases` read-only and the goldens in `goldens_dir`."""
    names = [check_database(path) for path in databases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise HarnessError(
            f"two databases would both be served as '{duplicates[0]}'; rename one of the files"
        )
    if not goldens_dir.is_dir():
        raise HarnessError(f"no goldens directory at {goldens_dir}")
    plugin.register(pm)
    ds = Datasette(
        [str(path) for path in databases],
        metadata=metadata(names),
        settings={"default_allow_sql": allow_sql},
        template_dir=str(TEMPLATES),
    )
    ds.add_memory_database(plugin.GOLDENS_DB)
    plugin.configure(ds, goldens_dir)
    return ds


def listen(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it from `getsockname`)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise HarnessError(f"cannot listen on '{host}': {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Restarting on the same port right after a stop must not wait out TIME_WAIT (uvicorn's
    # own sockets do the same); a port another process listens on still refuses.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; pick another with --port, or --port 0 for a free one" if port else ""
        raise HarnessError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(ds: Datasette, sock: socket.socket, ready: Callable[[str], None]) -> None:
    """Serve until interrupted; `ready` gets the URL once connections are accepted."""
    config = uvicorn.Config(ds.app(), log_level="warning", access_log=False)
    ready(url(sock))
    uvicorn.Server(config).run(sockets=[sock])
