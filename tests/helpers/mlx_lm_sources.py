"""The installed mlx-lm's sources as material for tests: a git repository of them, and
model files that differ from mlx-lm's own in one place."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlx_lm

SOURCES = Path(mlx_lm.__file__).resolve().parent
MOE_LAYER = "        out = h + r\n        return out"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def init_repo(path: Path) -> Path:
    """A git repository holding a copy of the installed mlx_lm package, one commit."""
    shutil.copytree(SOURCES, path / "mlx_lm", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "README.md").write_text("mlx-lm sources for a test\n")
    git(path.parent, "init", "-q", "-b", "main", str(path))
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "config", "user.name", "test")
    commit(path, "initial")
    return path


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def scale_moe_output(source: str, layer: int, factor: float = 1.01) -> str:
    """qwen3_moe's source with decoder layer `layer`'s MLP/MoE output scaled by `factor`."""
    marker = "        self.self_attn = Attention(args, layer_idx)"
    assert marker in source and MOE_LAYER in source, "qwen3_moe.py changed shape"
    source = source.replace(marker, f"{marker}\n        self.layer_idx = layer_idx")
    scaled = f"        if self.layer_idx == {layer}:\n            r = r * {factor}\n{MOE_LAYER}"
    return source.replace(MOE_LAYER, scaled)


def moe_group_on_layer_zero(source: str) -> str:
    """qwen3_moe's source whose shard() gives the MoE its sharding group on layer 0 only:
    later MoE layers keep their expert slices but never all-sum them. Unsharded it is
    mlx-lm's own model, number for number."""
    line = "                layer.mlp.sharding_group = group\n"
    assert source.count(line) == 1, "qwen3_moe.py's shard() changed shape"
    only_first = "group if layer is self.model.layers[0] else None"
    return source.replace(line, line.replace("group\n", f"{only_first}\n"))


def hang_in_forward(source: str) -> str:
    """qwen3_moe's source whose decoder layers never return from their forward (as a
    model that waits on something that never comes): a hang for the watchdog."""
    assert MOE_LAYER in source, "qwen3_moe.py changed shape"
    return source.replace(MOE_LAYER, f"        __import__('time').sleep(3600)\n{MOE_LAYER}")
