"""`harness serve`: results, history and goldens over HTTP (datasette), read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness import paths
from harness.commands.options import GoldensDir
from harness.records import store


def serve(
    db: Annotated[
        list[Path] | None,
        typer.Option("--db", help="Harness SQLite file to serve (repeatable; default harness.db)."),
    ] = None,
    goldens_dir: GoldensDir = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; anything but loopback is reachable.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one and prints it.")
    ] = 8001,
    allow_sql: Annotated[
        bool, typer.Option("--allow-sql", help="Let clients run their own (read-only) SQL.")
    ] = False,
) -> None:
    """Serve result databases and goldens over HTTP: canned queries, history charts, downloads.

    Example: harness serve --db harness.db --port 0
    """
    from harness.service import app  # datasette: imported only by the command that serves

    ds = app.build(db or [Path(store.DEFAULT_DB)], paths.goldens(goldens_dir).directory, allow_sql)
    sock = app.listen(host, port)
    app.serve(ds, sock, lambda url: print(f"serving {url} (Ctrl-C stops)", flush=True))
