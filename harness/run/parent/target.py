"""Where and how ranks run: the target (rank count, hosts, interpreter, environment), the
checks every launching command shares (backend, hostfile, rank count), free ports, and the
command line that starts `python PROGRAM` on the ranks (`mlx.launch` under any interpreter,
or a lone rank directly). Nothing here starts a process: that is `job.Job`'s."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import import_root
from harness.run import protocol

BACKENDS = ("ring", "mpi", "jaccl", "nccl")
LOCAL = ("127.0.0.1", "localhost")
SSH = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]


def find_launcher(python: str | None = None) -> str:
    """The `mlx.launch` beside the interpreter, else beside this one, else on PATH."""
    for interpreter in filter(None, (python, sys.executable)):
        beside = Path(interpreter).with_name("mlx.launch")
        if beside.exists():
            return str(beside)
    found = shutil.which("mlx.launch")
    if found is None:
        raise HarnessError(
            "mlx.launch was not found beside this Python or on PATH; "
            "install mlx into this environment (pip install 'mlx[cpu]' on Linux)."
        )
    return found


def free_port_block(count: int) -> int:
    """A starting port with `count` consecutive free ports after it.

    Every job gets its own ports: two jobs on the default port collide, and a collision
    looks like a hang.
    """
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1]
        if start + count < 65535 and all(_port_free(start + i) for i in range(count)):
            return start
    raise HarnessError("could not find free local ports for mlx.launch")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_options(backend: str | None, hostfile: str | None) -> None:
    """Fail before anything starts on an unknown backend or a missing hostfile."""
    if backend is not None and backend not in BACKENDS:
        raise HarnessError(f"unknown backend '{backend}'; known: {', '.join(BACKENDS)}")
    if hostfile is not None and not Path(hostfile).is_file():
        raise HarnessError(f"hostfile '{hostfile}' does not exist")


def hostfile_hosts(hostfile: str) -> list[str]:
    """The ssh name of every host of an mlx.launch hostfile, one rank each, in rank order."""
    try:
        data = json.loads(Path(hostfile).read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"hostfile '{hostfile}' is not readable JSON: {exc}") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts:
        raise HarnessError(f"hostfile '{hostfile}' lists no hosts")
    names = []
    for entry in hosts:
        name = entry.get("ssh") if isinstance(entry, dict) else entry
        if not isinstance(name, str) or not name:
            raise HarnessError(f"hostfile '{hostfile}' has a host without an 'ssh' name")
        names.append(name)
    return names


def hostfile_ranks(hostfile: str) -> int:
    """How many ranks an mlx.launch hostfile starts: one per host entry."""
    return len(hostfile_hosts(hostfile))


def rank_count(ranks: int, timeout: float, backend: str | None, hostfile: str | None) -> int:
    """The rank count a launch will have (a hostfile sets it), after the checks every
    launching command shares: one sentence for each mistake."""
    if ranks < 1:
        raise HarnessError(f"--ranks must be at least 1, got {ranks}")
    if timeout <= 0:
        raise HarnessError(f"--timeout must be positive, got {timeout:g}")
    check_options(backend, hostfile)
    if hostfile is None:
        return ranks
    hosts = hostfile_ranks(hostfile)
    if ranks not in (1, hosts):
        raise HarnessError(f"--ranks {ranks} disagrees with the {hosts} hosts in '{hostfile}'")
    return hosts


@dataclass
class Target:
    """Where and how ranks run: the rank count, the interpreter, extra environment."""

    ranks: int
    backend: str | None = None
    hostfile: str | None = None
    python: str | None = None  # None: this interpreter
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None  # working directory of the ranks on every host

    @property
    def interpreter(self) -> str:
        return self.python or sys.executable

    @property
    def in_process(self) -> bool:
        """One local rank under this very interpreter runs in this process."""
        return (
            self.ranks == 1 and self.hostfile is None and self.python is None and self.cwd is None
        )

    def hosts(self) -> list[str]:
        if self.hostfile is not None:
            return hostfile_hosts(self.hostfile)
        return ["127.0.0.1"] * self.ranks

    def environment(self) -> dict[str, str]:
        """Extra environment of every rank: the harness importable under any interpreter."""
        env = dict(self.env)
        if self.python is not None:
            paths = [env.get("PYTHONPATH"), str(import_root())]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env


def launch_argv(target: Target, program: list[str], job: str) -> list[str]:
    """The command that runs `python PROGRAM...` (`-m module args` or `script args`) on the
    target's ranks: through mlx.launch, or directly for one local rank.

    `--` ends mlx.launch's own options: it would otherwise take the program's `-n` etc.
    """
    check_options(target.backend, target.hostfile)
    if target.ranks == 1 and target.hostfile is None:
        return [target.interpreter, *program]
    argv = [find_launcher(target.python), "--python", target.interpreter]
    if target.hostfile is not None:
        argv += ["--hostfile", target.hostfile]
    else:
        argv += ["-n", str(target.ranks)]
    backend = target.backend or "ring"
    argv += ["--backend", backend]
    if backend == "ring":
        argv += ["--starting-port", str(free_port_block(target.ranks))]
    if target.cwd is not None:
        argv += ["--cwd", str(target.cwd)]
    for key, value in {**target.environment(), protocol.JOB_ENV: job}.items():
        argv += ["--env", f"{key}={value}"]
    return argv + ["--", *program]


def starts_directly(target: Target, like_mlx_launch: bool = False) -> bool:
    """Local ring ranks start with no launcher between them and the harness (see `Job`)."""
    local_ring = target.hostfile is None and (target.backend or "ring") == "ring"
    return local_ring and target.ranks > 1 and not like_mlx_launch
