"""Runs on a simulated cluster: sshd "hosts" on 127.0.0.2.. with a private /tmp each
(../shared/tools/cluster-sim), reached by mlx.launch over ssh like real Macs, with no
shared folder for the job. Needs root and openssh-server; skipped with the reason otherwise.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from harness.records import store

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SIM = REPO.parent / "shared" / "tools" / "cluster-sim"
PYTHON = str(Path(sys.executable))


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "cluster tests need root (cluster-sim starts sshd in mount namespaces)"
    if not CLUSTER_SIM.exists():
        return f"{CLUSTER_SIM} is missing"
    if not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()):
        return "sshd is missing: apt-get install -y openssh-server"
    return None


pytestmark = [
    pytest.mark.cluster,
    # cluster-sim's hosts are one machine-wide state (up, down): one worker runs them all.
    pytest.mark.xdist_group("cluster"),
    pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())),
]


def _sim(*args: str) -> str:
    out = subprocess.run(
        [str(CLUSTER_SIM), *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def kept() -> Path:
    """A folder every host sees at the same path (outside the hosts' private /tmp), for
    checkpoints and strategy files, as a real cluster has them installed on every host."""
    folder = Path(tempfile.mkdtemp(prefix="harness-cluster-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(kept):
    hostfile = _sim("up", "2")
    yield hostfile
    _sim("down")


def _on_host(host: str, command: str) -> None:
    subprocess.run(["ssh", host, command], check=True, timeout=60, stdin=subprocess.DEVNULL)


def test_smoke_suite_passes_over_ssh_without_a_shared_folder(run_cli, db_path, cluster):
    result = run_cli("run", "--suite", "smoke", "--hostfile", cluster, "--db", db_path)
    assert result.code == 0, result.out + result.err
    run_row, cases = store.get_run(store.open_db(db_path), None)
    assert run_row["ranks"] == 2 and run_row["hosts"] == cluster
    assert cases and all(c["status"] in ("pass", "skip") for c in cases)
    assert any(c["status"] == "pass" and c["ranks"] == 2 for c in cases)


def test_a_rank_killed_on_its_host_names_the_host_and_the_rest_run(run_cli, db_path, cluster, kept):
    strategy = kept / "dies.py"
    strategy.write_text(
        textwrap.dedent(
            """
            import os, signal

            def shard(model, group):
                if group.rank() == 1:
                    os.kill(os.getpid(), signal.SIGKILL)  # the host's rank vanishes
                model.shard(group)
            """
        )
    )
    suite = kept / "dies.toml"
    suite.write_text(
        f'[[case]]\narch = "qwen3_moe"\nstrategy = "{strategy}:shard"\n'
        '[[case]]\narch = "qwen3_moe"\nstrategy = "tp"\n'
    )
    result = run_cli("run", "--suite", str(suite), "--hostfile", cluster, "--db", db_path)
    assert result.code == 1
    _, cases = store.get_run(store.open_db(db_path), None)
    assert [c["status"] for c in cases] == ["crash", "pass"]
    assert "rank 1 (host 127.0.0.3)" in cases[0]["reason"]


def test_a_hang_records_every_ranks_python_stack(run_cli, db_path, cluster):
    result = run_cli(
        "run",
        "--arch",
        "qwen3_moe",
        "--strategy",
        "harness.faults.crash:hang_on_last_rank",
        "--timeout",
        "12",
        "--hostfile",
        cluster,
        "--db",
        db_path,
    )
    assert result.code == 1
    _, (case,) = store.get_run(store.open_db(db_path), None)
    assert case["status"] == "timeout"
    reason = case["reason"]
    assert "rank 0 (host 127.0.0.2) log" in reason and "rank 1 (host 127.0.0.3) log" in reason
    rank1 = reason.split("rank 1 (host 127.0.0.3) log")[1]
    assert "hang_on_last_rank" in rank1  # where the stuck rank waits
    rank0 = reason.split("rank 0 (host 127.0.0.2) log")[1].split("rank 1 (host")[0]
    assert "most recent call first" in rank0


def test_a_stream_of_batches_runs_through_one_launch_over_ssh(cluster):
    """CaseStream through mlx.launch: the launcher forwards each batch's spec to rank 0
    over ssh (its stdin kept open), a refusing strategy costs its case and no relaunch,
    and the job closes cleanly."""
    from harness.case import Case
    from harness.run.parent.plan import RunOptions
    from harness.run.parent.stream import CaseStream

    with CaseStream(RunOptions(hostfile=cluster, repeats=0, timeout=30)) as stream:
        first = stream.run([Case("qwen3_moe", "tp", decode_steps=1)])
        refused, after = stream.run(
            [
                Case("qwen3_moe", "harness.faults.crash:raise_on_last_rank", decode_steps=1),
                Case("qwen3_moe", "pp", decode_steps=1),
            ]
        )
        assert stream.launches == 1
        job = stream.job
    assert first[0].status == "pass" and after.status == "pass", (first[0].reason, after.reason)
    assert refused.status == "crash" and "rank 1 (host 127.0.0.3) raised" in refused.reason
    assert job.process.returncode == 0, "the launcher exits cleanly once the job is closed"


def test_a_checkpoint_case_held_against_its_golden_never_loads_in_the_parent(
    run_cli, db_path, cluster, kept, tmp_path
):
    checkpoint = kept / "qwen3_moe-mlx"
    subprocess.run(
        [
            PYTHON,
            "-m",
            "harness.cli",
            "checkpoint",
            "write",
            "--arch",
            "qwen3_moe",
            "--layout",
            "mlx",
            "--out",
            str(checkpoint),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    suite = kept / "ckpt.toml"
    suite.write_text(
        f'[[case]]\narch = "qwen3_moe"\nstrategy = "tp"\ncheckpoint = "{checkpoint}"\n'
    )
    golden_dir = tmp_path / "goldens"
    # Recorded where the model fits (here: this machine, in another process).
    subprocess.run(
        [
            PYTHON,
            "-m",
            "harness.cli",
            "golden",
            "record",
            "--suite",
            str(suite),
            "--dir",
            str(golden_dir),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    opened: list[str] = []
    watching = [True]

    def audit(event, args):
        if watching[0] and event == "open" and str(args[0]).startswith(str(checkpoint)):
            if str(args[0]).endswith((".safetensors", ".json")) and "config" not in str(args[0]):
                opened.append(str(args[0]))

    sys.addaudithook(audit)
    try:
        result = run_cli(
            "run",
            "--suite",
            str(suite),
            "--hostfile",
            cluster,
            "--reference",
            "golden",
            "--goldens",
            str(golden_dir),
            "--db",
            db_path,
        )
    finally:
        watching[0] = False
    assert result.code == 0, result.out + result.err
    assert opened == [], f"the parent opened the checkpoint's weights: {opened}"
    _, (case,) = store.get_run(store.open_db(db_path), None)
    assert case["status"] == "pass"
    assert case["reference"].startswith("golden ") and "mlx-lm" in case["reference"]


def test_a_host_that_does_not_answer_ssh_is_named_before_any_case(
    run_cli, db_path, cluster, tmp_path
):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(
        json.dumps(
            [{"ssh": "127.0.0.2", "ips": ["127.0.0.2"]}, {"ssh": "127.0.0.9", "ips": ["127.0.0.9"]}]
        )
    )
    result = run_cli("run", "--suite", "smoke", "--hostfile", str(hostfile), "--db", db_path)
    assert result.code == 2
    assert result.err.strip().splitlines() == [result.err.strip()]
    assert "host 127.0.0.9 does not answer ssh" in result.err
    assert list(store.open_db(db_path).query("select id from cases")) == []


def test_a_python_path_missing_on_the_hosts_is_named(run_cli, db_path, cluster, tmp_path):
    local_only = Path("/tmp") / f"harness-local-{os.getpid()}"
    local_only.mkdir(exist_ok=True)
    (local_only / "python").unlink(missing_ok=True)
    (local_only / "python").symlink_to(PYTHON)
    try:
        result = run_cli(
            "run",
            "--arch",
            "qwen3_moe",
            "--hostfile",
            cluster,
            "--python",
            str(local_only / "python"),
            "--db",
            db_path,
        )
    finally:
        shutil.rmtree(local_only, ignore_errors=True)
    assert result.code == 2
    assert f"has no Python at {local_only / 'python'}" in result.err


def test_different_mlx_lm_versions_on_two_hosts_are_named(run_cli, db_path, cluster):
    """A one-sided upgrade: the same interpreter path, and on one host an mlx-lm whose
    installed metadata says another release."""
    from importlib.metadata import distribution

    dist = distribution("mlx-lm")
    info = Path(dist._path)  # the installed mlx_lm-X.dist-info folder
    wrapper = "/tmp/hv/python"
    for host, fake in (("127.0.0.2", None), ("127.0.0.3", "0.31.3")):
        script = "mkdir -p /tmp/hv; printf '#!/bin/sh\\n"
        if fake:
            target = f"/tmp/hv/site/mlx_lm-{fake}.dist-info"
            version = f"s/^Version: .*/Version: {fake}/"
            meta = f"{info}/METADATA > {target}/METADATA"
            _on_host(host, f"mkdir -p {target} && sed '{version}' {meta}")
            script += f'PYTHONPATH=/tmp/hv/site:$PYTHONPATH exec {PYTHON} "$@"\\n'
        else:
            script += f'exec {PYTHON} "$@"\\n'
        _on_host(host, script + f"' > {wrapper}; chmod +x {wrapper}")
    result = run_cli(
        "run", "--arch", "qwen3_moe", "--hostfile", cluster, "--python", wrapper, "--db", db_path
    )
    assert result.code == 2, result.out + result.err
    assert "hosts run different mlx-lm versions" in result.err
    assert "127.0.0.3 has 0.31.3" in result.err


def test_four_hosts(run_cli, db_path, kept):
    hostfile = _sim("up", "4")
    try:
        result = run_cli(
            "run",
            "--arch",
            "qwen3_moe",
            "--strategy",
            "tp",
            "--hostfile",
            hostfile,
            "--db",
            db_path,
        )
    finally:
        _sim("up", "2")  # the module's cluster, as the other tests expect
    assert result.code == 0, result.out + result.err
    _, (case,) = store.get_run(store.open_db(db_path), None)
    assert case["status"] == "pass" and case["ranks"] == 4
