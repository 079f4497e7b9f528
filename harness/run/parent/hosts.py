"""Checking a cluster before anything launches: every host answers ssh, has the rank
interpreter at the same path, and runs the same mlx, mlx-lm and harness as the others.

mlx.launch reaches each host with `ssh HOST cmd` and runs the same Python path there; a host
that is down, lacks that Python, or was upgraded on its own otherwise fails deep inside a
collective or a model load, where it looks like the model's fault.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.run.parent.target import LOCAL, SSH, Target

PROBE = (
    "import json, platform, socket, sys\n"
    "from importlib.metadata import version, PackageNotFoundError\n"
    "def v(name):\n"
    "    try:\n"
    "        return version(name)\n"
    "    except PackageNotFoundError:\n"
    "        return None\n"
    "try:\n"
    "    from harness.records.provenance import source_digest\n"
    "    digest = source_digest()\n"
    "except Exception as exc:\n"
    "    digest = 'unimportable: ' + type(exc).__name__\n"
    "print(json.dumps({'python': sys.executable, 'mlx': v('mlx'), 'mlx-lm': v('mlx-lm'),\n"
    "    'harness': digest, 'hostname': socket.gethostname()}))\n"
)
COMPARED = ("mlx", "mlx-lm", "harness")


@dataclass
class HostInfo:
    host: str
    versions: dict


def _where(host: str) -> str:
    return "this machine" if host in LOCAL else f"host {host}"


def _probe(host: str, target: Target) -> HostInfo:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in target.environment().items())
    command = f"{env} {shlex.quote(target.interpreter)} -c {shlex.quote(PROBE)}".strip()
    argv = ["bash", "-c", command] if host in LOCAL else [*SSH, host, command]
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"host {host} did not answer within 30 s (ssh {host})") from None
    if host not in LOCAL and out.returncode == 255:
        why = (out.stderr.strip().splitlines() or ["no answer"])[-1]
        raise HarnessError(f"host {host} does not answer ssh: {why}")
    if out.returncode == 127 or "No such file" in out.stderr:
        raise HarnessError(
            f"{_where(host)} has no Python at {target.interpreter}; mlx.launch runs the same "
            "interpreter path on every host, so install the same environment there"
        )
    try:
        return HostInfo(host, json.loads(out.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarnessError(f"{_where(host)}: {target.interpreter} failed to start: {why}") from None


def check_hosts(target: Target) -> list[HostInfo]:
    """Probe every host of the target in parallel; one sentence and HarnessError on the first
    host that is down or lacks the interpreter, or on versions that differ across hosts."""
    hosts = list(dict.fromkeys(target.hosts()))
    with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
        futures = [pool.submit(_probe, host, target) for host in hosts]
        infos = [f.result() for f in futures]
    for info in infos:
        missing = [name for name in ("mlx", "mlx-lm") if not info.versions.get(name)]
        if missing:
            raise HarnessError(
                f"{_where(info.host)}: {target.interpreter} has no {' or '.join(missing)} installed"
            )
        if str(info.versions.get("harness", "")).startswith("unimportable"):
            raise HarnessError(
                f"{_where(info.host)} cannot import the harness under {target.interpreter}: "
                "install it there at the same path"
            )
    for name in COMPARED:
        seen = {info.host: info.versions.get(name) for info in infos}
        if len(set(seen.values())) > 1:
            listed = ", ".join(f"{host} has {value}" for host, value in seen.items())
            raise HarnessError(
                f"hosts run different {name} versions ({listed}); install the same "
                "environment on every host"
            )
    return infos
