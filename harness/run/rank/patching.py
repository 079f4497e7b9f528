"""Changing what one module instance computes, without touching its class, its attributes
or its weights: used to tap layer outputs and to inject faults."""

from __future__ import annotations

from collections.abc import Callable

import mlx.nn as nn


def wrap_call(module: nn.Module, around: Callable) -> None:
    """Make `module(*args)` return `around(original_call, *args)` for this instance only.

    The instance gets a subclass of its own class, so `isinstance` checks, attributes and
    parameters stay exactly as they were.
    """
    wrap_method(module, "__call__", around)


def wrap_method(module: nn.Module, name: str, around: Callable) -> None:
    """Make `module.name(*args)` return `around(original_method, *args)` for this instance
    only, as `wrap_call` does for `__call__`."""
    base = type(module)
    original = getattr(base, name)

    def method(self, *args, **kwargs):
        return around(lambda *a, **k: original(self, *a, **k), *args, **kwargs)

    module.__class__ = type(f"Wrapped{base.__name__}", (base,), {name: method})


def wrap_output(module: nn.Module, post: Callable) -> None:
    """Make `module(...)` return `post(original output)` for this instance only."""
    wrap_call(module, lambda call, *args, **kwargs: post(call(*args, **kwargs)))
