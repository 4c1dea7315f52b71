"""Runtimes that run exported artifacts: one module per runtime, each with `load(path, threads) -> Runner`.

The module name is the artifact's `runtime` field ("onnxruntime", "litert", ...; '-' becomes '_'). verify and measure
use nothing else, so a new runtime is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.errors import RuntimeUnavailable, unknown


class Runner(Protocol):
    """A loaded artifact: call it with one input batch (the artifact's fixed shape), get the first output."""

    runtime: str  # e.g. "onnxruntime 1.32.0"
    input_shape: tuple[int, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def available() -> list[str]:
    import edgekit.runtimes as pkg

    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def load_runner(runtime: str, path: str | Path, threads: int = 1) -> Runner:
    """Loads `path` into the named runtime."""
    mod_name = runtime.replace("-", "_")
    try:
        module = importlib.import_module(f"edgekit.runtimes.{mod_name}")
    except ModuleNotFoundError as e:
        if e.name == f"edgekit.runtimes.{mod_name}":
            raise unknown("runtime", runtime, available()) from None
        raise RuntimeUnavailable(f"runtime {runtime} needs {e.name}, which is not installed") from None
    return module.load(Path(path), threads)


def run_all(runner: Runner, x: np.ndarray) -> np.ndarray:
    """Outputs of `runner` on every input, one row per input (the artifact's fixed batch; a ragged tail is dropped)."""
    batch = runner.input_shape[0] if runner.input_shape else 1
    n = len(x) - len(x) % batch
    return np.concatenate([np.asarray(runner(x[i:i + batch])).reshape(batch, -1) for i in range(0, n, batch)])
