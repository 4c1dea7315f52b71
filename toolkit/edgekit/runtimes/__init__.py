"""Runtimes that run exported artifacts: one module per runtime, each with `load(path, threads) -> Runner`.

The module name is the artifact's `runtime` field ("onnxruntime", "litert", ...; '-' becomes '_'). verify and measure
use nothing else, so a new runtime is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.data import Inputs
from edgekit.errors import RuntimeUnavailable, unknown


class Runner(Protocol):
    """A loaded artifact. Call it with one input batch (or one feed of a model with several inputs, a dict by input
    name) and get the first output; `outputs` gives every output, in the artifact's order. A dynamic dimension takes
    any size the runtime accepts; `input_shape` is the first input's shape with dynamic dimensions at 1, and
    `batch` the batch it fixes (None: dynamic)."""

    runtime: str  # e.g. "onnxruntime 1.32.0"
    input_shape: tuple[int, ...]

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray: ...

    def outputs(self, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]: ...


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


def batch_of(runner: Runner) -> int:
    """How many inputs one call takes: the batch the artifact fixes, else 1."""
    batch = getattr(runner, "batch", None)
    if batch is None and not hasattr(runner, "batch"):
        batch = runner.input_shape[0] if runner.input_shape else 1
    return int(batch or 1)


def fit_input(runner: Runner, x: Any) -> Any:
    """One input batch in the artifact's static shape when it only differs by layout (e.g. 1x64 for 1x1x8x8); the
    first row's feed of an `Inputs`."""
    if isinstance(x, Inputs):
        return x.row(0)
    shape = tuple(runner.input_shape or ())
    if isinstance(x, np.ndarray) and shape and tuple(x.shape) != shape and int(np.prod(shape)) == x.size \
            and not getattr(runner, "dynamic", False):
        return x.reshape(shape)
    return x


def run_outputs(runner: Runner, x: np.ndarray | Inputs) -> list[np.ndarray]:
    """Every output of `runner` on every input. One (N, ...) array of inputs runs in batches of the artifact's own
    batch (a ragged tail is dropped) and each output is concatenated along its first axis; an `Inputs` runs feed by
    feed and each output gets a leading row axis."""
    if isinstance(x, Inputs):
        per_row = [runner.outputs(x.row(i)) for i in range(len(x))]
        return [np.stack([np.asarray(r[k]) for r in per_row]) for k in range(len(per_row[0]))] if per_row else []
    batch = batch_of(runner)
    n = len(x) - len(x) % batch
    per_batch = [runner.outputs(fit_input(runner, x[i:i + batch])) for i in range(0, n, batch)]
    if not per_batch:
        return []
    return [np.concatenate([np.asarray(b[k]).reshape(-1) if np.asarray(b[k]).ndim == 0 else np.asarray(b[k])
                            for b in per_batch]) for k in range(len(per_batch[0]))]


def run_all(runner: Runner, x: np.ndarray | Inputs) -> np.ndarray:
    """The first output of `runner` on every input, one row per input (N, -1)."""
    first = run_outputs(runner, x)[0]
    return first.reshape(len(first), -1)
