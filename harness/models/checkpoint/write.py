"""Writing tiny checkpoints in real on-disk layouts.

The source of truth is the zoo's deterministic model (`harness.models.build.build_model`); a
layout only renames and reshapes its parameters, so every layout of one case loads back
into the same numbers. A checkpoint is what real ones are: `config.json`, at least two
safetensors shards with `model.safetensors.index.json`, and a small working byte-level
tokenizer with a chat template.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from harness.case import Case
from harness.errors import HarnessError
from harness.models.build import build_model
from harness.models.checkpoint.layouts import Layout, family_of, get_layout, layouts_for, to_layout

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def quantization(layout: Layout, quant: int | None) -> tuple[int | None, str]:
    """(bits, mode) a layout holds given a requested quantization; conflicts are errors."""
    if layout.bits is not None:
        if quant not in (None, layout.bits):
            raise HarnessError(
                f"layout '{layout.name}' holds {layout.bits}-bit weights, not {quant}-bit"
            )
        return layout.bits, layout.mode
    if layout.hf and quant is not None:
        raise HarnessError(
            f"layout '{layout.name}' is unquantized, as Hugging Face writes it; "
            f"use layout 'mlx' or 'mlx-q{quant}' for {quant}-bit weights"
        )
    return quant, "affine"


def source_model(
    arch: str,
    layout: str,
    seed: int = 0,
    quant: int | None = None,
    group_size: int = 32,
    dtype: str = "float32",
    overrides: dict | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The in-memory model a layout is written from, quantized as the layout holds it."""
    spec = get_layout(layout)
    if layout not in layouts_for(arch):
        known = ", ".join(layouts_for(arch))
        raise HarnessError(f"'{arch}' has no '{layout}' layout; its layouts: {known}")
    bits, mode = quantization(spec, quant)
    affine = bits if mode == "affine" else None
    case = Case(
        arch,
        dtype=dtype,
        quant=affine,
        group_size=group_size,
        seed=seed,
        overrides=dict(overrides or {}),
    )
    model, config = build_model(case)
    family = family_of(arch)
    if mode == "mxfp4":
        config = _quantize(model, config, mode)
    elif spec.hf and family is not None and family.fused == "mxfp4":
        # OpenAI's gpt-oss release: mxfp4 experts, everything else unquantized.
        nn.quantize(model, 32, 4, mode="mxfp4", class_predicate=_is_expert)
        mx.eval(model.parameters())
        config = {**config, "quantization_config": {"quant_method": "mxfp4"}}
    return model, config


def _is_expert(path: str, module: nn.Module) -> bool:
    return path.endswith(("experts.gate_proj", "experts.up_proj", "experts.down_proj"))


def _quantize(model: nn.Module, config: dict, mode: str) -> dict:
    from mlx_lm.utils import quantize_model

    with contextlib.redirect_stdout(io.StringIO()):  # it prints an [INFO] line
        _, quantized = quantize_model(model, config, None, None, mode=mode)
    mx.eval(model.parameters())
    return quantized


def write_checkpoint(
    arch: str,
    layout: str,
    out: Path,
    seed: int = 0,
    quant: int | None = None,
    group_size: int = 32,
    *,
    dtype: str = "float32",
    overrides: dict | None = None,
    shards: int = 2,
) -> Path:
    """Write the zoo model of `arch` to `out` in `layout`; returns `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"'{out}' already exists and is not an empty directory")
    model, config = source_model(arch, layout, seed, quant, group_size, dtype, overrides)
    weights = to_layout(arch, layout, dict(tree_flatten(model.parameters())))
    out.mkdir(parents=True, exist_ok=True)
    fmt = "pt" if get_layout(layout).hf else "mlx"
    write_shards(out, weights, shards, fmt)
    from mlx_lm.utils import save_config

    save_config(dict(config), out / "config.json")
    write_tokenizer(out)
    return out


def write_shards(out: Path, weights: dict[str, mx.array], count: int, fmt: str) -> None:
    """Shards split by layer (so a pipeline stage reads only its own files) and the index."""
    layers = [int(m[1]) for k in weights if (m := _LAYER.search(k))]
    total = max(layers, default=0) + 1
    count = max(1, min(count, total))
    files = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    parts: list[dict[str, mx.array]] = [{} for _ in files]
    for key, value in weights.items():
        if match := _LAYER.search(key):
            index = int(match[1]) * count // total
        else:
            index = 0 if "embed" in key else count - 1
        parts[index][key] = value
    for name, part in zip(files, parts, strict=True):
        mx.save_safetensors(str(out / name), part, metadata={"format": fmt})
    weight_map = {k: files[i] for i, part in enumerate(parts) for k in part}
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in weights.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's byte-level alphabet: printable bytes map to themselves, the rest above 255.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tokenizer(out: Path) -> None:
    """A byte-level tokenizer of 256 ids: ids 0-3 special, ids 4-255 the bytes 4-255."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = _bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({chars[b]: b for b in range(len(SPECIAL_TOKENS), 256)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
