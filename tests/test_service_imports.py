"""The service and the report side stand on records alone: serving and reading results
never loads mlx, mlx-lm or the run pipeline."""

import subprocess
import sys

MODULES = [
    "harness.service.app",
    "harness.service.plugin",
    "harness.service.pull",
    "harness.records.rundiff",
    "harness.records.junit",
    "harness.records.table",
    "harness.commands.serve",
    "harness.commands.compare",
]


def test_service_imports_no_mlx_and_no_run_pipeline():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')"
        " or m.startswith(('harness.run', 'harness.models')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
