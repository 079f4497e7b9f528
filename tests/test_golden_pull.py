"""`harness golden pull` against services that misbehave (a small real HTTP server serving
crafted answers): every fault is one sentence, exit 2, and nothing written."""

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PAYLOAD = b"PK\x03\x04 stand-in for an npz"


def sidecar(key: str, payload: bytes = PAYLOAD) -> bytes:
    return json.dumps({"key": key, "sha256": hashlib.sha256(payload).hexdigest()}).encode()


def index(*keys: str, payload: bytes = PAYLOAD) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    return json.dumps({"rows": [{"key": k, "sha256": digest} for k in keys], "next": None}).encode()


@pytest.fixture
def fake_service():
    """A service answering `routes[path] = (status, content type, body)`; 404 otherwise."""
    routes: dict[str, tuple[int, str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status, content_type, body = routes.get(
                self.path.split("?")[0], (404, "text/plain", b"")
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


def serve_golden(routes, key: str, payload: bytes = PAYLOAD, meta: bytes | None = None):
    routes[f"/-/goldens/{key}.npz"] = (200, "application/octet-stream", payload)
    routes[f"/-/goldens/{key}.json"] = (200, "application/json", meta or sidecar(key, payload))


def pull(run_cli, url, directory, *args):
    return run_cli("golden", "pull", url, "--dir", str(directory), *args)


def test_a_good_golden_is_written(fake_service, run_cli, tmp_path):
    url, routes = fake_service
    routes["/goldens/goldens.json"] = (200, "application/json", index("llama-fp32-0123"))
    serve_golden(routes, "llama-fp32-0123")
    assert pull(run_cli, url, tmp_path).code == 0
    assert (tmp_path / "llama" / "llama-fp32-0123.npz").read_bytes() == PAYLOAD


def test_unreachable(run_cli, tmp_path, assert_one_line_error):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = pull(run_cli, f"http://127.0.0.1:{port}", tmp_path)
    assert_one_line_error(result, "cannot reach the golden service", str(port))
    assert not any(tmp_path.iterdir())


def test_http_error(fake_service, run_cli, tmp_path, assert_one_line_error):
    url, routes = fake_service
    routes["/goldens/goldens.json"] = (500, "text/plain", b"boom")
    assert_one_line_error(pull(run_cli, url, tmp_path), "answered HTTP 500", "goldens.json")


def test_wrong_content_type(fake_service, run_cli, tmp_path, assert_one_line_error):
    url, routes = fake_service
    routes["/goldens/goldens.json"] = (200, "text/html", b"<html>a login page</html>")
    assert_one_line_error(
        pull(run_cli, url, tmp_path), "content type text/html", "a harness service?"
    )


def test_hash_mismatch_writes_nothing(fake_service, run_cli, tmp_path, assert_one_line_error):
    url, routes = fake_service
    routes["/goldens/goldens.json"] = (
        200,
        "application/json",
        index("llama-fp32-0123", "qwen3_moe-fp32-4567"),
    )
    serve_golden(routes, "llama-fp32-0123")  # good, and listed first
    serve_golden(routes, "qwen3_moe-fp32-4567", meta=sidecar("qwen3_moe-fp32-4567", b"other"))
    result = pull(run_cli, url, tmp_path)
    assert_one_line_error(result, "qwen3_moe-fp32-4567", "does not match the sha256")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("key", ["../../escaped-fp32-0123", "..-fp32-0123", "/etc/x-fp32-1"])
def test_path_escaping_the_goldens_directory(
    fake_service, run_cli, tmp_path, key, assert_one_line_error
):
    url, routes = fake_service
    routes["/goldens/goldens.json"] = (200, "application/json", index(key))
    serve_golden(routes, key)
    directory = tmp_path / "goldens"
    assert_one_line_error(pull(run_cli, url, directory), "would be written outside")
    assert list(tmp_path.rglob("*")) == []


def test_not_an_index(fake_service, run_cli, tmp_path, assert_one_line_error):
    url, routes = fake_service
    routes["/goldens/goldens.json"] = (200, "application/json", b"{not json")
    assert_one_line_error(pull(run_cli, url, tmp_path), "did not answer valid JSON")
    routes["/goldens/goldens.json"] = (200, "application/json", b'{"rows": ["llama"]}')
    assert_one_line_error(pull(run_cli, url, tmp_path), "a goldens index without rows")


def test_bad_options(run_cli, tmp_path, assert_one_line_error):
    assert_one_line_error(pull(run_cli, "ftp://host/goldens", tmp_path), "not an http://")
    assert_one_line_error(
        pull(run_cli, "http://127.0.0.1:1", tmp_path, "--force"), "--force and --reason"
    )
    assert_one_line_error(
        pull(run_cli, "http://127.0.0.1:1", tmp_path, "--suite", "smoke", "--arch", "llama"),
        "not both",
    )
