"""Build hook: recipes/, targets/ and profiles/ live at the top of the checkout (where users and docs name them) and
are read at run time, so a wheel carries copies under edgekit/_data/ (edgekit.targets.project_root finds them).
Everything else is configured in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("recipes", "targets", "profiles")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        for name in SHIPPED:
            src, dest = ROOT / name, Path(self.build_lib) / "edgekit" / "_data" / name
            if src.is_dir():
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithData})
