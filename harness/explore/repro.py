"""A failure as what reproduces it: one `harness run` command with the scenario inline,
and a suite case (TOML) for `harness explore export`."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunFlags:
    """The run options a reproduction repeats: where and how the ranks ran."""

    ranks: int
    hostfile: str | None = None
    backend: str | None = None
    python: str | None = None
    impl: tuple[str, ...] = field(default_factory=tuple)  # MODEL_TYPE=file.py, as given


def command(arch: str, strategy: str, precision: str, scenario: dict, flags: RunFlags) -> str:
    """The `harness run` command that runs this one example again."""
    argv = ["harness", "run", "--arch", arch, "--strategy", strategy, "--precision", precision]
    if flags.hostfile:
        argv += ["--hostfile", flags.hostfile]
    else:
        argv += ["--ranks", str(flags.ranks)]
    if flags.backend:
        argv += ["--backend", flags.backend]
    if flags.python:
        argv += ["--python", flags.python]
    for spec in flags.impl:
        argv += ["--impl", spec]
    argv += ["--scenario", json.dumps(scenario, separators=(",", ":"))]
    return shlex.join(argv)


def toml_value(value) -> str:
    """A JSON-able value as TOML (inline tables and arrays): scenarios are ints, strings,
    lists and tables only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"not a TOML value: {value!r}")


def suite_case(arch: str, strategy: str, precision: str, scenario: dict, comment: str) -> str:
    """One `[[case]]` of a suite, with a comment line saying what it found."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [
        "[[case]]",
        f"arch = {toml_value(arch)}",
        f"strategy = {toml_value(strategy)}",
        f"precision = {toml_value(precision)}",
        f"scenario = {toml_value(scenario)}",
    ]
    return "\n".join(lines) + "\n"
