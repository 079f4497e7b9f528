"""Joining mlx's ring without its one-second retry (harness.run.rank.ring): the last rank
waits until rank 0 listens, where it can see that, and only there."""

import json
import socket
import threading
import time

import pytest

from harness.run.rank import ring


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hostfile(tmp_path, hosts: list[str]) -> str:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps([[h] for h in hosts]))
    return str(path)


def test_a_listening_socket_is_seen_and_a_closed_port_is_not():
    if ring.listening(1) is None:
        pytest.skip("this system does not list its sockets in /proc/net/tcp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert ring.listening(port) is False  # bound, not yet listening
        s.listen()
        assert ring.listening(port) is True
    assert ring.listening(port) is False


def test_a_system_without_socket_tables_says_nothing(tmp_path):
    assert ring.listening(1234, tables=(tmp_path / "absent",)) is None


def test_only_the_last_rank_waits_and_only_for_a_rank_0_on_loopback(tmp_path):
    local = _hostfile(tmp_path, ["127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.1:5002"])
    assert ring.first_peer(2, local) == 5000
    assert ring.first_peer(0, local) is None
    assert ring.first_peer(1, local) is None
    remote = _hostfile(tmp_path, ["10.0.0.1:5000", "10.0.0.2:5000"])
    assert ring.first_peer(1, remote) is None
    (tmp_path / "bad.json").write_text("not json")
    assert ring.first_peer(1, str(tmp_path / "bad.json")) is None
    assert ring.first_peer(1, str(tmp_path / "missing.json")) is None


def test_the_last_rank_waits_until_rank_0_listens(tmp_path):
    if ring.listening(1) is None:
        pytest.skip("this system does not list its sockets in /proc/net/tcp")
    port = _free_port()
    hostfile = _hostfile(tmp_path, [f"127.0.0.1:{port}", f"127.0.0.1:{_free_port()}"])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))

    def listen_later():
        time.sleep(0.3)
        server.listen()

    thread = threading.Thread(target=listen_later)
    thread.start()
    started = time.monotonic()
    ring.wait_for_rank0({"MLX_RANK": "1", "MLX_HOSTFILE": hostfile}, wait=5.0)
    waited = time.monotonic() - started
    thread.join()
    try:
        assert ring.listening(port) is True
        assert 0.25 <= waited < 2.0
    finally:
        server.close()


def test_the_wait_is_bounded_and_rank_0_never_waits(tmp_path):
    hostfile = _hostfile(tmp_path, [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"])
    started = time.monotonic()
    ring.wait_for_rank0({"MLX_RANK": "1", "MLX_HOSTFILE": hostfile}, wait=0.2)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    ring.wait_for_rank0({"MLX_RANK": "0", "MLX_HOSTFILE": hostfile}, wait=5.0)
    ring.wait_for_rank0({}, wait=5.0)  # not a ring rank at all
    assert time.monotonic() - started < 0.5
