"""Every command documents itself with an example."""

import typer

from harness.cli import app


def _commands(group, prefix: str = ""):
    for name, command in group.commands.items():
        path = f"{prefix} {name}".strip()
        if hasattr(command, "commands"):  # a sub-app (typer vendors its own click)
            yield from _commands(command, path)
        else:
            yield path, command


def test_every_command_has_help_with_an_example():
    root = typer.main.get_command(app)
    commands = dict(_commands(root))
    assert {
        "run",
        "archs",
        "report",
        "preflight",
        "props",
        "golden verify",
        "checkpoint write",
    } <= set(commands)
    for path, command in commands.items():
        assert command.help and "Example: harness " in command.help, path


def test_help_runs(run_cli):
    result = run_cli("--help")
    assert result.code == 0 and "run" in result.out


def test_a_short_flag_means_one_thing_in_every_command():
    """`-n` is --ranks wherever it appears (bench's trial count is --num-trials only)."""
    root = typer.main.get_command(app)
    meanings: dict[str, set[str]] = {}
    for _, command in _commands(root):
        for param in command.params:
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts if len(o) == 2):
                meanings.setdefault(short, set()).update(longs)
    assert meanings["-n"] == {"--ranks"}
