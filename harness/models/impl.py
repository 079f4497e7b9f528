"""Alternative model implementations: build a model type from another model file.

`--impl qwen3_moe=path/to/qwen3_moe.py` (a fork's or a pull request's version of the file)
makes every later build of that model type in this process use the file. It is loaded the
way mlx-lm loads its own modules: as `mlx_lm.models.<type>`, so its relative imports
(`from .base import ...`, `from .switch_layers import ...`) resolve against the installed
mlx-lm, and mlx-lm's own `_get_classes` then finds it. Only the named file runs; a
checkpoint's code (`trust_remote_code`) never does.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from harness.errors import HarnessError, describe


def parse(specs: list[str] | None) -> dict[str, str]:
    """`MODEL_TYPE=path/to/file.py` options as {model_type: absolute path}."""
    overrides: dict[str, str] = {}
    for spec in specs or []:
        model_type, sep, path = spec.partition("=")
        if not sep or not model_type.strip() or not path.strip():
            raise HarnessError(f"--impl takes MODEL_TYPE=path/to/file.py, got '{spec}'")
        file = Path(path.strip()).expanduser()
        if not file.is_file() or file.suffix != ".py":
            raise HarnessError(f"--impl {model_type}: '{path}' is not a Python file")
        overrides[model_type.strip()] = str(file.resolve())
    return overrides


_INSTALLED: dict[str, str] = {}  # model_type -> file, in this process


def installed() -> dict[str, str]:
    """The model types this process builds from another file (`install`)."""
    return dict(_INSTALLED)


def install(overrides: dict[str, str]) -> None:
    """Make each model_type use its file from now on in this process."""
    if not overrides:
        return
    _INSTALLED.update(overrides)
    import mlx_lm.models
    from mlx_lm.utils import MODEL_REMAPPING

    for model_type, path in overrides.items():
        # mlx-lm remaps some types (mistral -> llama) before importing the module.
        module_name = f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise HarnessError(f"--impl {model_type}: cannot load '{path}' as a module")
        module = importlib.util.module_from_spec(spec)
        previous = sys.modules.get(module_name)
        sys.modules[module_name] = module  # as import does, so the file sees itself
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            _restore(module_name, previous)
            raise HarnessError(
                f"--impl {model_type}: '{path}' failed to import: {describe(exc)}"
            ) from None
        missing = [name for name in ("Model", "ModelArgs") if not hasattr(module, name)]
        if missing:
            _restore(module_name, previous)
            raise HarnessError(
                f"--impl {model_type}: '{path}' does not define {' and '.join(missing)}, so it "
                f"is not an implementation of model_type '{model_type}'"
            )
        setattr(mlx_lm.models, module_name.rsplit(".", 1)[-1], module)


def _restore(module_name: str, previous) -> None:
    if previous is None:
        sys.modules.pop(module_name, None)
    else:
        sys.modules[module_name] = previous
