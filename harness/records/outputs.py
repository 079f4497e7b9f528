"""What a model run produces, as numpy so it crosses processes: logits, greedy tokens,
captured hidden states, and timings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Output:
    """What one run of a model produced, as numpy (float32) so it crosses processes."""

    prefill: np.ndarray  # [B, L, V] logits
    decode: np.ndarray  # [S, B, V] logits of each greedy decode step
    tokens: np.ndarray  # [B, S + 1] greedy tokens: after prefill, then after each step
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # "layer.{i}.{part}" -> [B, L, D]
    # [B, L]: which prefill call produced each position, -1 for padding; None when one
    # call processed every position (nothing chunked, nothing padded).
    prefill_calls: np.ndarray | None = None
    # Decode fed the reference's tokens (teacher-forced), not its own choices: every step
    # is comparable whatever the tokens; `tokens` still holds this run's own choices.
    forced: bool = False
    # Each later request of the same prompts against this one (records.ladder's
    # compare_requests); travels in the message beside the arrays, not in them.
    requests: list[dict] = field(default_factory=list)
    # A serve scenario's emissions (rows are requests in order of insertion, `prefill` their
    # first tokens' logprobs, `decode[k - 1]` their k-th): "op" [B, S + 1], the op that
    # emitted each token, "order" [B, S + 1], its place among all emitted tokens (-1: none),
    # "reused" [B], the tokens each request took from an earlier one's cache.
    schedule: dict[str, np.ndarray] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "prefill": self.prefill,
            "decode": self.decode,
            "tokens": self.tokens,
            **{f"hidden:{k}": v for k, v in self.layers.items()},
            **{f"schedule:{k}": v for k, v in self.schedule.items()},
        }
        if self.prefill_calls is not None:
            arrays["prefill_calls"] = self.prefill_calls
        if self.forced:
            arrays["forced"] = np.ones((), dtype=np.uint8)
        return arrays

    @property
    def valid(self) -> np.ndarray:
        """[B, L] booleans: the prefill positions that hold a prompt token (not padding)."""
        if self.prefill_calls is None:
            return np.ones(self.prefill.shape[:2], dtype=bool)
        return self.prefill_calls >= 0

    @property
    def decode_valid(self) -> np.ndarray:
        """[S, B] booleans: the decode steps that hold a token's logits (a serve program's
        request emits at its own steps: `schedule["order"]`; every step otherwise)."""
        order = self.schedule.get("order")
        if order is None or order.shape[1] - 1 != self.decode.shape[0]:
            return np.ones(self.decode.shape[:2], dtype=bool)
        return np.ascontiguousarray(order[:, 1:].T >= 0)

    @property
    def last_logits(self) -> np.ndarray:
        """[B, V]: each prompt's logits at its last token, which choose the first greedy token."""
        last = self.valid.shape[1] - 1 - np.argmax(self.valid[:, ::-1], axis=1)
        return self.prefill[np.arange(self.prefill.shape[0]), last]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Output:
        layers = {
            k.removeprefix("hidden:"): v for k, v in arrays.items() if k.startswith("hidden:")
        }
        calls = arrays.get("prefill_calls")
        forced = bool(arrays["forced"]) if "forced" in arrays else False
        schedule = {
            k.removeprefix("schedule:"): v for k, v in arrays.items() if k.startswith("schedule:")
        }
        return cls(
            arrays["prefill"],
            arrays["decode"],
            arrays["tokens"],
            layers,
            calls,
            forced,
            schedule=schedule,
        )


@dataclass
class Timings:
    prefill_tok_s: float
    decode_tok_s: float
    prefill_samples: list[float]  # seconds per prefill call
    decode_samples: list[float]  # seconds per decode step
    peak_memory: int  # bytes, this process

    def to_dict(self) -> dict:
        return dict(self.__dict__)
