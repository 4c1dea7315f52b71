"""Issue 16, item 18: a non-editable install carries what edgekit reads at run time (recipes, targets, profiles)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

# What a wheel needs to build: the project's own files, copied so the build never writes into the checkout.
_SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "toolkit", "targets", "recipes", "profiles")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in _SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.is_file():
            shutil.copy2(path, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return next((tmp / "dist").glob("edgekit-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> dict[str, str]:
    """The wheel installed into a folder of its own; the environment that imports it instead of the checkout."""
    site = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEKIT_HOME", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(site)}


def test_wheel_contains_recipes_targets_and_profiles(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("targets", "recipes", "profiles"):
        shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / kind).rglob("*") if p.is_file()
                   and p.suffix in (".toml", ".yaml", ".json")}
        assert shipped, kind
        missing = {s for s in shipped if f"edgekit/_data/{s}" not in names}
        assert not missing, missing
    assert {"edgekit/devices/harness.py", "edgekit/runtimes/_portable.py", "edgekit/runtimes/web_index.html"} <= names


def test_installed_copy_finds_its_targets_and_recipes_outside_the_checkout(installed: dict, tmp_path: Path):
    code = ("import edgekit, edgekit.targets as t, edgekit.pipeline as p; print(edgekit.__file__); "
            "print(t.list_targets()); print(len(p.load_recipe('basic').stages))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=installed, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    where, names, stages = r.stdout.strip().splitlines()
    assert not Path(where).resolve().is_relative_to(ROOT) and "rpi4" in names and int(stages) > 0
    r = subprocess.run([sys.executable, "-m", "edgekit", "targets"], cwd=tmp_path, env=installed,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "rpi4" in r.stdout, r.stderr


@pytest.mark.slow
def test_installed_copy_compresses_for_the_host(installed: dict, tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "edgekit", "compress", "--target", "host", "--out", "RUN"],
                       cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "RUN" / "report.json").is_file()
