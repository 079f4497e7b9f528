"""`harness serve` in a subprocess on a free loopback port, and plain HTTP against it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request


def start_service(*args: str) -> tuple[subprocess.Popen, str]:
    """`harness serve ARGS --port 0`: the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, line.split()[1]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=20)


def get(url: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=30) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


def get_json(url: str):
    status, content_type, body = get(url)
    assert (status, content_type) == (200, "application/json"), body[:300]
    return json.loads(body)
