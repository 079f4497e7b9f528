"""A package index on loopback speaking the simple API in JSON (PEP 691), for mlx-lm."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness.bisect import releases


@contextlib.contextmanager
def serve(versions: list[str], yanked: set[str] = frozenset()):
    """Yields the index URL to put in PIP_INDEX_URL."""

    class Index(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/simple/mlx-lm":
                self.send_error(404)
                return
            files = [
                {"filename": name, "url": name, "yanked": v in yanked}
                for v in versions
                for name in (f"mlx_lm-{v}-py3-none-any.whl", f"mlx_lm-{v}.tar.gz")
            ]
            body = json.dumps({"name": "mlx-lm", "versions": versions, "files": files})
            self.send_response(200)
            self.send_header("Content-Type", releases.ACCEPT)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def use(monkeypatch, url: str) -> None:
    for name in releases.INDEX_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", url)
