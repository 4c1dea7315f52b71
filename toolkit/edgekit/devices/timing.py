"""The timing loop: several artifacts timed side by side in this process (warm-up, then interleaved rounds; p50,
p90, min, mean), and a candidate timed against an anchor round by round. Interleaving makes a slow phase of a shared,
noisy machine hit every runner alike. The device harness has its own copy of the loop (it runs without edgekit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.runtimes import Runner, fit_input, load_runner


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
    return [Timing.from_samples(s) for s in interleaved_samples(runners, x, warmup, runs, progress)]


def interleaved_samples(runners: list[Runner], x: np.ndarray | list[np.ndarray], warmup: int = 5, runs: int = 50,
                        progress: object = None) -> list[list[float]]:
    """time_interleaved's samples (seconds), one list per runner."""
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
    return samples


def paired_timing(runner: Runner, anchor: Runner, x: np.ndarray, runs: int, warmup: int = 3
                  ) -> tuple[float, float]:
    """(candidate p50 in ms, median of per-round candidate/anchor time ratios).

    Each round times both back to back, in alternating order; the median of per-round ratios cancels slow phases
    of a shared machine that a ratio of two p50s would not.
    """
    for _ in range(warmup):
        runner(x)
        anchor(x)
    own, ratios = [], []
    for i in range(runs):
        pair = (runner, anchor) if i % 2 == 0 else (anchor, runner)
        t = []
        for r in pair:
            t0 = time.perf_counter()
            r(x)
            t.append(time.perf_counter() - t0)
        tc, ta = (t[0], t[1]) if i % 2 == 0 else (t[1], t[0])
        own.append(tc)
        ratios.append(tc / ta)
    return float(np.median(own) * 1e3), float(np.median(ratios))


def time_files(files: dict[str, tuple[str, Path]], x: np.ndarray, threads: int = 1, runs: int = 100,
               warmup: int = 5) -> dict[str, dict[str, float]]:
    """Interleaved timing of named files ({name: (runtime, path)}) in one process, as report dicts; each is fed the
    first input of `x` in its own input shape."""
    runners = [load_runner(runtime, path, threads) for runtime, path in files.values()]
    xs = [fit_input(r, x[:1]) for r in runners]
    return {n: t.as_dict() for n, t in zip(files, time_interleaved(runners, xs, warmup, runs), strict=True)}
