"""Ships the checkout's top-level `suites/` and `goldens/` inside the package.

They stay at the top level of the checkout (where the project's layout puts them) and are
copied to `harness/data/` in the wheel at build time, where `harness.paths` reads them. An
editable install copies nothing: it runs from the checkout and reads the checkout's own
folders, so a golden recorded there lands in the checkout. Everything else is in
pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("suites", "goldens")
# A failed check's `obtained` files and half-written temporaries are never shipped.
LEFT_OUT = shutil.ignore_patterns("*.obtained.*", "*.tmp", "__pycache__")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in SHIPPED:
            target = Path(self.build_lib) / "harness" / "data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / name, target, ignore=LEFT_OUT)


setup(cmdclass={"build_py": BuildWithData})
