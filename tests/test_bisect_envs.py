"""Environments are really built (uv, and pip where uv is absent), cached by what was
installed, reused, listed and pruned. A tiny wheel made here keeps them offline."""

import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.bisect import envs
from harness.errors import HarnessError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "envs"


@pytest.fixture
def wheel(tmp_path):
    """A pure-Python wheel with no dependencies: installs without an index."""
    path = tmp_path / "tinypkg-0.1-py3-none-any.whl"
    info = "tinypkg-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tinypkg/__init__.py", "ANSWER = 42\n")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n")
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(
            f"{info}/RECORD",
            f"tinypkg/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n",
        )
    return str(path)


def _imports(env: envs.Env) -> str:
    done = subprocess.run(
        [str(env.python), "-c", "import tinypkg; print(tinypkg.ANSWER)"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def test_created_once_then_reused_listed_and_pruned(cache, wheel, run_cli):
    first = envs.ensure([wheel])
    assert not first.reused and first.installer == "uv" and first.path.parent == cache
    assert _imports(first) == "42"
    again = envs.ensure([wheel])
    assert again.reused and again.key == first.key and again.python == first.python
    assert [e.key for e in envs.cached()] == [first.key]

    listed = run_cli("env", "list")
    assert listed.code == 0 and first.key in listed.out and str(cache) in listed.out

    (cache / "0123456789abcdef").mkdir()  # what an interrupted install leaves: no manifest
    kept = run_cli("env", "prune", "--older-than", "1")
    assert kept.code == 0 and "0 environment(s) removed" in kept.out
    assert first.path.exists() and not (cache / "0123456789abcdef").exists()
    pruned = run_cli("env", "prune")
    assert pruned.code == 0 and f"removed {first.key}" in pruned.out
    assert not first.path.exists() and envs.cached() == []


def test_pip_fallback_where_uv_is_absent(cache, wheel, monkeypatch):
    monkeypatch.setattr(envs, "find_uv", lambda: None)
    env = envs.ensure([wheel])
    assert env.installer == "pip" and "uv was not found" in env.notes[0]
    assert _imports(env) == "42"


def test_a_failed_install_is_one_sentence_and_leaves_nothing(cache, tmp_path):
    missing = str(tmp_path / "nothing-0.1-py3-none-any.whl")
    with pytest.raises(HarnessError, match="could not create an environment with") as info:
        envs.ensure([missing])
    assert "\n" not in str(info.value)
    assert envs.cached() == [] and not [p for p in cache.iterdir() if p.is_dir()]


def test_two_asking_at_once_share_one_install(cache, wheel):
    """A second caller waits for the first's install instead of deleting it half-made (two
    bisects at once, or two test workers)."""
    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(lambda _: envs.ensure([wheel]), range(2)))
    assert made[0].path == made[1].path and sorted(e.reused for e in made) == [False, True]
    assert _imports(made[0]) == "42" and [e.key for e in envs.cached()] == [made[0].key]


def test_the_key_follows_what_is_installed():
    assert envs.env_key(envs.release_requirements("0.31.3")) != envs.env_key(
        envs.release_requirements("0.32.2")
    )
    assert envs.release_requirements("0.31.3")[0] == "mlx-lm==0.31.3"
