"""One search in one runtime: sensitivity -> NSGA-II search -> choice -> final interleaved timing.

Used by the quantize stage and by benchmarks/quant_search.py, so both report the same figures the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.devices.timing import time_files
from edgekit.quant.evaluate import Candidate, Scorer
from edgekit.quant.policy import INT8_CHANNEL, Policy
from edgekit.quant.search import run_search
from edgekit.quant.sensitivity import LayerSensitivity, layer_sensitivity, ranking
from edgekit.search_core import Constraints, choose, pareto_front


@dataclass
class SearchResult:
    """Everything a report needs about one runtime's search."""

    fmt: str
    backend: str
    runtime: str  # name and version, e.g. "onnxruntime 1.32.0"
    metric: str
    float_quality: float
    float_path: Path
    float_size: int
    int8: Candidate
    chosen: Candidate
    reason: str
    constraints_met: bool
    candidates: list[Candidate]
    front: list[Candidate]
    sensitivity: list[LayerSensitivity]
    latency_source: str
    search_seconds: float
    evaluated: int
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # final, interleaved
    extra: dict[str, Candidate] = field(default_factory=dict)  # e.g. NNCF default INT8
    noise_floor: float | None = None  # drop of the float model under 40 dB input noise (points)
    study: dict[str, Any] | None = None  # the shared study: name, storage, workers (edgekit.study)
    unit: str = "pts"  # of the quality metric's drops: points, or dB

    def p50(self, name: str) -> float | None:
        return (self.timings.get(name) or {}).get("p50_ms")

    def verdict(self) -> dict[str, Any]:
        """The issue's bar: chosen >= 0.9x as fast as full INT8 and drop <= half of full INT8's."""
        fi, ch = self.p50("int8"), self.p50("chosen")
        speed = fi / ch if fi and ch else None
        half = self.int8.drop / 2 if self.int8.drop > 0 else 0.0
        ok_q = self.chosen.drop <= half + 1e-9
        ok_s = speed is not None and speed >= 0.9
        return {"speed_vs_int8": None if speed is None else round(speed, 3),
                "drop_vs_int8": round(self.chosen.drop / self.int8.drop, 3) if self.int8.drop > 0 else None,
                "quality_ok": ok_q, "speed_ok": ok_s, "met": ok_q and ok_s}

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.fmt, "backend": self.backend, "runtime": self.runtime, "metric": self.metric,
                "unit": self.unit,
                "float_quality": self.float_quality, "int8": self.int8.as_dict(), "chosen": self.chosen.as_dict(),
                "chosen_policy": self.chosen.policy.to_dict(), "reason": self.reason,
                "constraints_met": self.constraints_met, "latency_source": self.latency_source,
                "timings": self.timings, "search_seconds": round(self.search_seconds, 2),
                "evaluated": self.evaluated, "noise40db_drop": self.noise_floor,
                "front": [c.as_dict() for c in self.front],
                "sensitivity": [s.as_dict() for s in self.sensitivity], "verdict": self.verdict(),
                "extra": {k: c.as_dict() for k, c in self.extra.items()}, "study": self.study}


def search_runtime(scorer: Scorer, *, fmt: str, backend_name: str, calibrations: tuple[str, ...], trials: int,
                   constraints: Constraints, seed: int = 0, max_seconds: float | None = None,
                   latency_slack: float = 0.10, final_runs: int = 100, ranked: list[str] | None = None,
                   sensitivity: list[LayerSensitivity] | None = None, shares: dict[str, float] | None = None,
                   progress: Any = None, distributed: Any = None) -> SearchResult:
    """Runs the whole search for one runtime.

    Args:
        scorer: evaluates policies in this runtime (its float artifact is the quality reference).
        calibrations: the backend's activation calibration methods, preferred first.
        trials: NSGA-II trials; 0 evaluates only the seeds given by `ranked` (no sensitivity pass).
        ranked: a sensitivity ranking computed elsewhere (e.g. by the ONNX search) to skip this runtime's pass.
        shares: each layer's share of float latency (for the per-layer table).
        distributed: a quant.search.Distributed (shared study, other workers); its `spawn` is called with the
            scorer once the anchor is timed (what the workers need is known then). None: in memory, this process.
    """
    start = time.perf_counter()
    layers = scorer.backend.layers
    full = Policy.uniform(layers, INT8_CHANNEL, calibration=calibrations[0], label="full INT8 per-channel")
    int8 = scorer.score(full, "full-int8", time_it=False)
    scorer.set_anchor(int8.path)
    if sensitivity is None and ranked is None:
        # at most half of the time limit: the NSGA-II search is what finds the policy
        deadline = None if max_seconds is None else start + max_seconds / 2
        sensitivity = layer_sensitivity(scorer, calibrations[0], progress=progress, deadline=deadline)
    sensitivity = sensitivity or []
    for s in sensitivity:
        s.latency_share = (shares or {}).get(s.layer.name)
    # layers the pass did not reach (time limit) follow the measured ones, in model order
    seen = {s.layer.name for s in sensitivity}
    ranked = ranked or ranking(sensitivity) + [la.name for la in layers if la.name not in seen]
    use_latency = scorer.latency != "none"
    remaining = None if max_seconds is None else max(10.0, max_seconds - (time.perf_counter() - start))
    if distributed is not None and distributed.spawn is not None:
        spawn = distributed.spawn
        distributed.spawn = lambda: spawn(scorer, remaining)
    cands = run_search(layers, ranked, lambda p, n: scorer.score(p, n), trials=max(trials, 1),
                       calibrations=calibrations, constraints=constraints, seed=seed, max_seconds=remaining,
                       use_latency=use_latency, progress=progress, distributed=distributed)
    int8 = scorer.score(full, "full-int8")  # the cached candidate, now timed
    chosen, reason, met = choose(cands, constraints, latency_slack)
    chosen = _local(scorer, chosen)
    seconds = time.perf_counter() - start
    timings = _final(scorer, int8, chosen, final_runs)
    return SearchResult(fmt=fmt, backend=backend_name, runtime=scorer.runtime_name, metric=scorer.metric,
                        float_quality=scorer.float_quality, float_path=scorer.float_path,
                        float_size=scorer.float_path.stat().st_size, int8=int8, chosen=chosen, reason=reason,
                        constraints_met=met, candidates=cands, front=pareto_front(cands), sensitivity=sensitivity,
                        latency_source=scorer.latency, search_seconds=seconds, evaluated=scorer.evaluated,
                        timings=timings, noise_floor=None if (nf := scorer.noise_floor()) is None else round(nf, 3),
                        unit=scorer.quality_metric.unit)


def _local(scorer: Scorer, cand: Candidate) -> Candidate:
    """A candidate another worker scored (its file is on that worker's disk): applied and scored again here, so the
    artifact written is one this process made and checked; its search latency is kept."""
    if cand.path.is_file() and not cand.extra.get("worker_trial"):
        return cand
    here = scorer.score(cand.policy, f"chosen-{cand.trial:03d}", time_it=False)
    here.p50_ms, here.p50_raw_ms, here.latency_source = cand.p50_ms, cand.p50_raw_ms, cand.latency_source
    here.trial, here.extra = cand.trial, {**cand.extra, **here.extra}
    return here


def _final(scorer: Scorer, int8: Candidate, chosen: Candidate, runs: int) -> dict[str, dict[str, float]]:
    """Final figures: float, full INT8 and the chosen artifact timed interleaved (the same file once), on the
    search's device when it has one."""
    if scorer.latency == "measured":
        paths = {"float": scorer.float_path, "int8": int8.path}
        if chosen is not int8:
            paths["chosen"] = chosen.path
        if scorer.device is not None:
            lats = scorer.device.time([scorer._job(p) for p in paths.values()], runs, warmup=5, threads=scorer.threads)
            timings = {n: {k: getattr(lat, k) for k in ("p50_ms", "p90_ms", "min_ms", "mean_ms", "runs")}
                       | {"device": lat.via} for n, lat in zip(paths, lats, strict=True) if lat.source == "measured"}
        else:
            timings = time_files({n: (scorer.runtime, p) for n, p in paths.items()}, scorer.x, scorer.threads, runs)
        timings.setdefault("chosen", timings["int8"])
        return timings
    if scorer.latency == "predicted":
        return {k: {"p50_ms": c.p50_ms} for k, c in (("int8", int8), ("chosen", chosen))}
    return {}


def finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def eval_split(x: np.ndarray, y: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    return x[:n].astype(np.float32), None if y is None else y[:n]


def transfer_runtime(scorer: Scorer, policy: Policy, *, fmt: str, backend_name: str, calibrations: tuple[str, ...],
                     constraints: Constraints, source: str, final_runs: int = 100) -> SearchResult:
    """Applies a policy found in another runtime (no search here): full INT8 and that policy, timed and scored.

    Layers the policy does not name (e.g. names that differ between exports) are quantised per-channel.
    """
    start = time.perf_counter()
    layers = scorer.backend.layers
    cal = policy.calibration if policy.calibration in calibrations else calibrations[0]
    full = Policy.uniform(layers, INT8_CHANNEL, calibration=calibrations[0], label="full INT8 per-channel")
    moved = Policy(layers={la.name: policy.layers.get(la.name, INT8_CHANNEL) for la in layers}, calibration=cal,
                   symmetric_activations=policy.symmetric_activations, label=f"policy from {source}")
    int8 = scorer.score(full, "full-int8", time_it=False)
    scorer.set_anchor(int8.path)
    int8 = scorer.score(full, "full-int8")
    chosen = scorer.score(moved, "chosen")
    met = constraints.met(chosen)
    reason = (f"policy chosen by the {source} search, applied through {backend_name} (activation calibration "
              f"{cal}); not searched in this runtime")
    timings = _final(scorer, int8, chosen, final_runs)
    cands = [int8, chosen]
    return SearchResult(fmt=fmt, backend=backend_name, runtime=scorer.runtime_name, metric=scorer.metric,
                        float_quality=scorer.float_quality, float_path=scorer.float_path,
                        float_size=scorer.float_path.stat().st_size, int8=int8, chosen=chosen, reason=reason,
                        constraints_met=met, candidates=cands, front=pareto_front(cands), sensitivity=[],
                        latency_source=scorer.latency, search_seconds=time.perf_counter() - start,
                        evaluated=scorer.evaluated, timings=timings, unit=scorer.quality_metric.unit)
