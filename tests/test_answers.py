"""What the installed mlx-lm offers, remembered across processes (harness.models.answers):
planning a run needs no mlx-lm import once the answers are known, and an answer is never
served for another mlx-lm or for a model file given with --impl."""

import subprocess
import sys

import pytest

from harness.models import answers, impl

PLAN = """
import sys
from harness.case import Case
from harness.run.parent.plan import skip_reason
reasons = [
    skip_reason(Case("qwen3_moe", "tp"), 2),
    skip_reason(Case("deepseek_v41", "tp", prompts=((1, 2, 3), (4, 5))), 2),
    skip_reason(Case("qwen3_next", "tp"), 2),
    skip_reason(Case("qwen3_moe", "tp"), 3),
]
print(repr(reasons))
print("mlx_lm" in sys.modules)
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(answers, "_answers", None)
    monkeypatch.setattr(impl, "_INSTALLED", {})  # another test may have installed one
    return tmp_path / "harness" / answers.FILE


def _plan(env_cache) -> tuple[str, bool]:
    env = {"XDG_CACHE_HOME": str(env_cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", PLAN], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    return out[0], out[1] == "True"


def test_a_second_plan_answers_the_same_without_importing_mlx_lm(tmp_path):
    first, imported = _plan(tmp_path)
    assert imported  # nothing known yet: mlx-lm was asked
    second, imported = _plan(tmp_path)
    assert second == first and not imported
    none, batch, tp, divisible = eval(second)
    assert none is None
    assert "LayerCache cannot batch prompts of different lengths" in batch
    assert tp == "qwen3_next has no tensor-parallel shard() in the installed mlx-lm"
    assert "to be divisible by 3" in divisible


def test_an_answer_is_computed_once_then_read(cache):
    calls = []

    def compute():
        calls.append(1)
        return {"tp": True}

    assert answers.remembered("support", {"model_type": "x"}, compute) == {"tp": True}
    answers._answers = None  # as a new process: read back from the file
    assert answers.remembered("support", {"model_type": "x"}, compute) == {"tp": True}
    assert len(calls) == 1 and cache.is_file()
    answers.remembered("support", {"model_type": "y"}, compute)  # another question
    assert len(calls) == 2


def test_another_mlx_lm_is_asked_again(cache, monkeypatch):
    calls = []
    answers.remembered("support", {"model_type": "x"}, lambda: calls.append(1) or 1)
    monkeypatch.setattr(answers, "fingerprint", lambda: "another-release")
    answers.remembered("support", {"model_type": "x"}, lambda: calls.append(1) or 2)
    assert len(calls) == 2


def test_an_implementation_given_with_impl_is_never_remembered(cache, monkeypatch):
    monkeypatch.setattr(impl, "_INSTALLED", {"qwen3_moe": "/my/qwen3_moe.py"})
    calls = []
    for answer in (1, 2):
        assert answers.remembered("support", {"model_type": "x"}, lambda a=answer: a) == answer
        calls.append(answer)
    assert not cache.exists()


def test_a_damaged_cache_is_ignored_and_rewritten(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert answers.remembered("support", {"model_type": "x"}, lambda: 7) == 7
    answers._answers = None
    assert answers.remembered("support", {"model_type": "x"}, lambda: 8) == 7


def test_without_platformdirs_the_answer_is_computed(cache, monkeypatch):
    """A bisect's environment of another mlx-lm release has none of the harness's own
    dependencies: no user cache to name, the question is asked of mlx-lm each time."""

    def no_platformdirs():
        raise ImportError("No module named 'platformdirs'")

    monkeypatch.setattr(answers.paths, "user_cache", no_platformdirs)
    calls = []
    for _ in range(2):
        assert answers.remembered("support", {"model_type": "x"}, lambda: calls.append(1) or 5) == 5
    assert len(calls) == 2 and not cache.exists()
