"""The test suite's own rules: a test module never imports another test module or the
helpers; shared helpers live in `tests/helpers/`, reached through `conftest.py`'s fixtures."""

import ast
from pathlib import Path

TESTS = Path(__file__).parent
LOCAL = {path.stem for path in TESTS.glob("*.py")} | {"helpers"}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another_or_the_helpers():
    offenders = {
        path.name: sorted(_imported(path) & LOCAL)
        for path in sorted(TESTS.glob("test_*.py"))
        if _imported(path) & LOCAL
    }
    assert offenders == {}, "use a fixture from conftest.py instead"


def test_helpers_import_no_test_module():
    for path in sorted((TESTS / "helpers").glob("*.py")):
        assert not _imported(path) & (LOCAL - {"helpers"}), path.name
