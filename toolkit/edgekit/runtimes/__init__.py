"""Runtimes that run exported artifacts: one module per runtime, each with `load(path, threads) -> Runner`.

The module name is the artifact's `runtime` field ("onnxruntime", "litert", ...; '-' becomes '_'). verify and measure
use nothing else, so a new runtime is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass
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


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> Timing:
        ms = np.asarray(samples_s) * 1e3
        return cls(float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), float(ms.min()), float(ms.mean()),
                   len(ms))

    def as_dict(self) -> dict[str, float | int]:
        return {"p50_ms": round(self.p50_ms, 4), "p90_ms": round(self.p90_ms, 4), "min_ms": round(self.min_ms, 4),
                "mean_ms": round(self.mean_ms, 4), "runs": self.runs}


def time_interleaved(runners: list[Runner], x: np.ndarray | list[np.ndarray], warmup: int = 5, runs: int = 50,
                     progress: object = None) -> list[Timing]:
    """Times several runners side by side: warm-up, then `runs` rounds that each run every runner once.

    Interleaving makes a slow phase of a shared, noisy machine hit every runner alike.
    """
    xs = x if isinstance(x, list) else [x] * len(runners)
    for r, xi in zip(runners, xs, strict=True):
        for _ in range(warmup):
            r(xi)
    samples: list[list[float]] = [[] for _ in runners]
    task = progress.add_task("timing", total=runs) if progress is not None else None  # type: ignore[attr-defined]
    for _ in range(runs):
        for i, (r, xi) in enumerate(zip(runners, xs, strict=True)):
            t0 = time.perf_counter()
            r(xi)
            samples[i].append(time.perf_counter() - t0)
        if task is not None:
            progress.advance(task)  # type: ignore[attr-defined]
    if task is not None:
        progress.remove_task(task)  # type: ignore[attr-defined]
    return [Timing.from_samples(s) for s in samples]
