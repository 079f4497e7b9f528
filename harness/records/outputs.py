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

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "prefill": self.prefill,
            "decode": self.decode,
            "tokens": self.tokens,
            **{f"hidden:{k}": v for k, v in self.layers.items()},
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Output:
        layers = {
            k.removeprefix("hidden:"): v for k, v in arrays.items() if k.startswith("hidden:")
        }
        return cls(arrays["prefill"], arrays["decode"], arrays["tokens"], layers)


@dataclass
class Timings:
    prefill_tok_s: float
    decode_tok_s: float
    prefill_samples: list[float]  # seconds per prefill call
    decode_samples: list[float]  # seconds per decode step
    peak_memory: int  # bytes, this process

    def to_dict(self) -> dict:
        return dict(self.__dict__)
