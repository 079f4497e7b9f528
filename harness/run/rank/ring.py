"""Joining mlx's ring on one machine without its one-second retry.

In mlx's ring backend every rank but the last listens on its own address and accepts its
left neighbour before it connects to its right one; the last rank connects to rank 0
first. A connect that finds nobody listening yet is retried after a whole second (mlx's
`CONN_WAIT`), and while the last rank sleeps there it does not listen either, so rank 0's
own connect to it fails and waits a second too. Ranks that start together race for this:
on 2 cores with a third process busy, half of 40 two-rank starts here lost 1-2 s to it.

So before `mx.distributed.init`, the last rank waits until rank 0 listens, where it can
see that: rank 0's address is a loopback one (the ranks share this machine) and the
system lists its listening sockets (Linux's /proc/net/tcp). Anywhere else, or past
`WAIT`, it goes on at once, as before.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

WAIT = 1.0  # seconds: never longer than the retry it saves
POLL = 0.002
LISTEN = "0A"  # a socket's state in /proc/net/tcp: TCP_LISTEN
TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def listening(port: int, tables=TABLES) -> bool | None:
    """Whether a socket of this machine listens on `port`; None where the system does not
    say (no /proc/net/tcp)."""
    suffix = f":{port:04X}"
    readable = False
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == LISTEN:
                return True
    return False if readable else None


def first_peer(rank: int, hostfile: str) -> int | None:
    """The local port of rank 0 when `rank` is the ring's last rank (the one that connects
    before it accepts) and rank 0 is on this machine's loopback; None otherwise."""
    try:
        nodes = json.loads(Path(hostfile).read_text())
        host, port = nodes[0][0].rsplit(":", 1)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if len(nodes) < 2 or rank != len(nodes) - 1 or not host.startswith("127."):
        return None
    return int(port)


def wait_for_rank0(environ=os.environ, wait: float = WAIT) -> None:
    """On the ring's last rank, wait (at most `wait`) until rank 0 listens; see above."""
    rank, hostfile = environ.get("MLX_RANK"), environ.get("MLX_HOSTFILE")
    if rank is None or not hostfile or not rank.isdigit():
        return
    port = first_peer(int(rank), hostfile)
    if port is None:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and listening(port) is False:
        time.sleep(POLL)
