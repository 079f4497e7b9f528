"""Text prompts, tokenized as a user of the checkpoint would: its own tokenizer (through
mlx-lm, trust_remote_code off) and its chat template when it has one.

Prompts of different lengths are left-padded to the longest with the tokenizer's pad token
(else its eos), and no attention mask goes with them: the pad tokens are part of the input.
The reference and every rank get the same ids, so the comparisons stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError, describe


def tokenize_prompts(checkpoint_dir: Path, texts: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Each text as a user turn of the chat template (plain encode without one), as one
    left-padded batch of token ids; deterministic."""
    tokenizer = _tokenizer(Path(checkpoint_dir))
    ids = [_encode(tokenizer, text) for text in texts]
    if not ids or not all(ids):
        raise HarnessError(f"'{checkpoint_dir}': every text prompt must give at least one token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise HarnessError(
            f"'{checkpoint_dir}': the tokenizer has neither a pad nor an eos token to pad with"
        )
    longest = max(len(i) for i in ids)
    return tuple(tuple([pad] * (longest - len(i)) + i) for i in ids)


def _tokenizer(path: Path):
    from mlx_lm.utils import load_tokenizer

    try:
        return load_tokenizer(path, tokenizer_config_extra={"trust_remote_code": False})
    except Exception as exc:
        raise HarnessError(
            f"'{path}': mlx-lm could not load the tokenizer for text prompts: {describe(exc)}"
        ) from None


def _encode(tokenizer, text: str) -> list[int]:
    if tokenizer.has_chat_template:
        messages = [{"role": "user", "content": text}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return list(tokenizer.encode(text))
