"""`CaseStream` on real ranks: batches of cases handed to one open job as they are made
(explore's hypothesis draws them), a crash that costs its case and one relaunch, and no
rank left behind however the stream ends."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.case import Case
from harness.run.parent.plan import RunOptions
from harness.run.parent.stream import CaseStream

pytestmark = pytest.mark.multirank

OPTIONS = RunOptions(ranks=2, repeats=0, timeout=30)


def _ranks(children, parent: int) -> list[int]:
    return [pid for pid, (cmd, _) in children(parent).items() if b"harness.run.rank.worker" in cmd]


def _gone(pids: list[int], seconds: float = 15) -> list[int]:
    """The pids still alive after waiting up to `seconds` for them to go."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)  # leave the machine clean whatever the verdict
    return alive


def test_batches_stream_through_one_launch_and_the_ranks_exit_cleanly(children):
    batches = [
        [Case("qwen3_moe", "tp", decode_steps=2)],
        [Case("qwen3_moe", "pp", decode_steps=2), Case("llama", "tp", decode_steps=1)],
        # A bf16-activation case is judged against its fp32 truth, as `harness run` does;
        # one that cannot apply is a skip with the reason.
        [Case("qwen3_moe", "tp", dtype="bfloat16", quant=4, decode_steps=2), Case("mixtral", "tp")],
    ]
    with CaseStream(OPTIONS) as stream:
        assert stream.launches == 0, "nothing launches before the first batch"
        results = [stream.run(batch) for batch in batches]
        ranks = _ranks(children, os.getpid())
        job = stream.job
        assert sorted(rank["pid"] for rank in job.hello) == sorted(ranks)
        assert stream.launches == 1
    assert stream.job is None
    assert [rank.returncode for rank in job.ranks] == [0, 0], "the ranks exit on their own"
    assert [[r.case for r in batch] for batch in results] == batches
    statuses = [[r.status for r in batch] for batch in results]
    assert statuses == [["pass"], ["pass", "pass"], ["pass", "skip"]], [
        r.reason for batch in results for r in batch
    ]
    assert results[2][0].worst.envelope is not None, "judged against its fp32 truth"
    assert results[0][0].golden is None, "goldens are off"
    assert len(ranks) == 2
    assert not _gone(ranks), "the ranks outlived the stream's exit"


def test_a_crash_mid_stream_is_its_case_and_the_next_batch_relaunches():
    with CaseStream(OPTIONS) as stream:
        first = stream.run([Case("qwen3_moe", "tp", decode_steps=1)])
        crashed = stream.run(
            [Case("qwen3_moe", "harness.faults.crash:segfault_on_last_rank", decode_steps=1)]
        )
        assert stream.launches == 1
        after = stream.run([Case("qwen3_moe", "pp", decode_steps=1)])
        assert stream.launches == 2
    assert first[0].status == "pass", first[0].reason
    assert crashed[0].status == "crash"
    assert "rank 1 killed by SIGSEGV" in crashed[0].reason
    assert after[0].status == "pass", after[0].reason


def test_a_hang_mid_stream_is_a_timeout_of_its_case():
    options = RunOptions(ranks=2, repeats=0, timeout=8)
    with CaseStream(options) as stream:
        hung, passed = stream.run(
            [
                Case("qwen3_moe", "harness.faults.crash:hang_on_last_rank", decode_steps=1),
                Case("qwen3_moe", "tp", decode_steps=1),
            ]
        )
    assert hung.status == "timeout" and "did not finish within 8s" in hung.reason
    assert "rank 1 log" in hung.reason, "each rank's Python stack comes with it"
    assert passed.status == "pass", passed.reason


STREAM_SCRIPT = """
import sys
from harness.case import Case
from harness.run.parent.plan import RunOptions
from harness.run.parent.stream import CaseStream

with CaseStream(RunOptions(ranks=2, repeats=0, timeout=120)) as stream:
    stream.run([Case("qwen3_moe", "tp", decode_steps=1)])
    print("first batch done", flush=True)
    stream.run([Case("qwen3_moe", sys.argv[1] + ":tp", decode_steps=1)])
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the ranks' parent from /proc")
def test_ctrl_c_mid_stream_leaves_no_rank_behind(tmp_path, children):
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import time\n\ndef tp(model, group):\n    time.sleep(60)\n    model.shard(group)\n"
    )
    script = tmp_path / "stream.py"
    script.write_text(textwrap.dedent(STREAM_SCRIPT))
    parent = subprocess.Popen(
        [sys.executable, str(script), str(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout.readline().strip() == "first batch done"
        time.sleep(2)  # into the second batch's case: the strategy sleeps, its peer waits
        ranks = _ranks(children, parent.pid)
        assert len(ranks) == 2, "the ranks of the first batch run the second"
        parent.send_signal(signal.SIGINT)
        _, err = parent.communicate(timeout=30)
    finally:
        parent.kill()
    assert "KeyboardInterrupt" in err
    assert not _gone(ranks), "ranks outlived the interrupted stream"
