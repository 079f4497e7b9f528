"""The tree's layers: what reads results never loads mlx, imports point downward and form no
cycle, and one run loop serves `run` and `selftest`."""

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.case import Case
from harness.records import store
from harness.run.parent.plan import RunOptions
from harness.run.parent.session import run

PACKAGE = Path(__file__).resolve().parents[1] / "harness"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_records_import_neither_mlx_nor_mlx_lm():
    modules = sorted(p.stem for p in (PACKAGE / "records").glob("*.py") if p.stem != "__init__")
    code = "import sys\n" + "".join(f"import harness.records.{m}\n" for m in modules)
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')))"
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (
        "store" in modules
        and "goldens" in modules
        and "ladder" in modules
        and "diagnose" in modules
    )


def test_report_loads_no_mlx(tmp_path):
    db = tmp_path / "r.db"
    store.finish_run(
        d := store.open_db(db), store.start_run(d, "run", "x", 1, None, None, ["h"]), "passed"
    )
    code = (
        "import sys\nfrom harness.cli import main\n"
        f"try:\n    main(['report', '--db', {str(db)!r}])\nexcept SystemExit as e:\n"
        "    code = e.code\n"
        "print('MLX', sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')))"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "MLX []" in out.stdout


def _imports(path: Path, anywhere: bool = False) -> set[str]:
    """The harness modules a file imports at module level (`anywhere`: inside functions
    too)."""
    return _imported(path.read_text(), anywhere)


def _imported(source: str, anywhere: bool = False) -> set[str]:
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("harness")}
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def test_records_import_only_records_case_scenario_and_errors():
    allowed = (
        "harness.records",
        "harness.case",
        "harness.scenario",
        "harness.errors",
        "harness.paths",
        "harness.status",
    )
    for name, path in MODULES.items():
        if name.startswith("harness.records"):
            bad = [m for m in _imports(path) if not m.startswith(allowed) and m != "harness"]
            assert not bad, f"{name} imports {bad}"


def test_the_status_vocabularies_stand_alone():
    # Every layer down to harness.errors imports them: they may import nothing of ours.
    assert not _imports(MODULES["harness.status"], anywhere=True)


def test_lower_layers_never_import_the_command_layer():
    upper = ("harness.cli", "harness.commands", "harness.render")
    for name, path in MODULES.items():
        if not name.startswith(upper):
            bad = [m for m in _imports(path) if m.startswith(upper)]
            assert not bad, f"{name} imports {bad}"


def _breaking(prefix: str, forbidden: tuple[str, ...], anywhere: bool = True) -> list[str]:
    return [
        f"{name} imports {bad}"
        for name, path in MODULES.items()
        if name.startswith(prefix)
        if (bad := sorted(m for m in _imports(path, anywhere) if m.startswith(forbidden)))
    ]


def test_the_rank_side_never_imports_the_parent_side():
    assert not _breaking("harness.run.rank", ("harness.run.parent",))


def test_the_parent_side_loads_the_rank_side_only_to_be_the_one_rank_itself():
    # A job on one local rank runs in this process (no launch): the only way in, lazily.
    assert _breaking("harness.run.parent", ("harness.run.rank",)) == [
        "harness.run.parent.watch imports ['harness.run.rank', 'harness.run.rank.in_process']"
    ]
    assert not _breaking("harness.run.parent", ("harness.run.rank",), anywhere=False)


def test_the_protocol_stands_alone():
    assert not _imports(MODULES["harness.run.protocol"]) - {"harness"}


def test_models_and_strategies_never_import_the_run():
    assert not _breaking("harness.models", ("harness.run",))
    assert not _breaking("harness.strategies", ("harness.run", "harness.models"))


def test_the_service_stands_on_records_alone():
    allowed = (
        "harness.service",
        "harness.records",
        "harness.case",
        "harness.errors",
        "harness.status",
    )
    assert not [
        f"{name} imports {bad}"
        for name, path in MODULES.items()
        if name.startswith("harness.service")
        if (bad := sorted(m for m in _imports(path, True) if not m.startswith(allowed)))
    ]


def _graph() -> dict[str, set[str]]:
    """Every module's harness imports, those made when a function runs included: a cycle
    through a call-time import is a cycle all the same, only hidden."""
    return {
        name: {m for m in _imports(path, anywhere=True) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import cycle found, as the trail of modules that closes it."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt not in state and (found := visit(nxt, [*trail, node])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [])):
            return found
    return None


def test_no_import_cycle_even_through_imports_inside_functions():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# How harness.models.impl once cleared the zoo's cache after installing a model file.
CLEARING_THE_ZOO = """
def install(overrides):
    from harness.zoo import support

    support.cache_clear()
"""


def test_the_cycle_check_sees_the_zoo_cleared_from_inside_a_function():
    graph = _graph()
    graph["harness.models.impl"] |= _imported(CLEARING_THE_ZOO, anywhere=True) & set(MODULES)
    assert not _imported(CLEARING_THE_ZOO)  # nothing at module level: the old check passed
    cycle = _cycle(graph)
    assert cycle and {"harness.zoo", "harness.models.impl"} <= set(cycle), cycle


def test_case_from_a_newer_harness_drops_unknown_fields_with_a_warning():
    data = {**Case("qwen3_moe").to_dict(), "field_of_the_future": 3}
    with pytest.warns(UserWarning, match="field_of_the_future"):
        case = Case.from_dict(data)
    assert case.key() == Case("qwen3_moe").key()


@pytest.mark.multirank
def test_repeats_zero_passes_the_smoke_suite_at_two_ranks(run_cli, db_path):
    result = run_cli("run", "--suite", "smoke", "--ranks", "2", "--repeats", "0", "--db", db_path)
    assert result.code == 0, result.out + result.err
    _, cases = store.get_run(store.open_db(db_path), None)
    assert cases and all(c["status"] in ("pass", "skip") for c in cases)
    assert all(c["prefill_tok_s"] is None for c in cases)


INJECTED = """
import os
if os.environ.get("MLX_RANK") is not None:
    import harness.run.rank.cases as cases
    original = cases._sharded
    def _sharded(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyError("a bug of the harness, injected after the model ran")
    cases._sharded = _sharded
"""


@pytest.mark.multirank
def test_a_bug_in_the_harness_on_a_rank_is_a_harness_error_not_a_crash(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(INJECTED)
    options = RunOptions(ranks=2, repeats=0, goldens=None, env={"PYTHONPATH": str(tmp_path)})
    (result,) = run([Case("qwen3_moe", "tp", decode_steps=1)], options)
    assert result.status == "error", result.reason
    assert "harness internal error" in result.reason
    assert "KeyError" in result.reason and "injected" in result.reason
    assert "crash" not in result.reason


@pytest.mark.multirank
def test_sigterm_during_selftest_marks_the_run_interrupted(tmp_path):
    db_path = tmp_path / "selftest.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "selftest", "--ranks", "2", "--db", str(db_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    rows = 0
    while time.monotonic() < deadline and rows < 1:
        time.sleep(0.3)
        if db_path.exists():
            try:
                rows = len(list(store.open_db(db_path).query("select id from cases")))
            except Exception:
                rows = 0
    assert rows >= 1, "the selftest stored no case"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run_row, cases = store.get_run(store.open_db(db_path), None)
    assert run_row["kind"] == "selftest" and run_row["status"] == "interrupted"
    assert cases and all(c["verdict"] for c in cases)


def test_the_readme_layout_names_every_module():
    # The README's layout is the map a newcomer reads first: a module it does not name
    # is a room nobody is sent to.
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    named = {
        word.removesuffix(".py")
        for quoted in re.findall(r"`([^`]+)`", layout)
        for word in re.split(r"[\s/,()]+", quoted)
    }
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    assert modules
    missing = sorted(str(p.relative_to(PACKAGE.parent)) for p in modules if p.stem not in named)
    assert not missing, f"README's Layout names none of: {missing}"
