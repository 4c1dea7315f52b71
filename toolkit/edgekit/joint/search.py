"""The joint pruning + quantisation search: Optuna's NSGA-II over per-group widths, per-layer precision (and sparsity
where the target runs sparse weights) and the runtime, on quality drop, latency on the target and size, under
`max_quality_drop` (and optional latency and size budgets).

    result = search_joint(model, data, target, Settings(max_quality_drop=1.0), workdir)

The first generation holds the designs a person would try by hand (the unmodified model, full INT8, uniform widths
in FP32 and INT8, per runtime); NSGA-II's crossover and mutation explore per-layer mixes from there. Constraints
reach NSGA-II through Trial.set_constraint (feasible candidates dominate). Candidates whose screened latency cannot
reach the front are pruned trials: they cost an export, not a fine-tune and a measurement.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import SettingsError
from edgekit.joint.build import Builder, TrainData
from edgekit.joint.evaluate import Evaluator, JointCandidate
from edgekit.joint.settings import RUNTIMES, Settings
from edgekit.joint.space import JointSpace
from edgekit.search_core import Constraints, choose, pareto_front

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.data import DataBundle
    from edgekit.targets import Target


@dataclass
class JointResult:
    """What the search found and how it was measured."""

    chosen: JointCandidate
    reason: str
    constraints_met: bool
    candidates: list[JointCandidate]
    front: list[JointCandidate]
    dense: dict[str, JointCandidate]
    space: JointSpace
    model: nn.Module  # the chosen decision's torch model (pruned and fine-tuned; the unmodified one if not pruned)
    history: list[list[Any]]  # Torch-Pruning history that rebuilds the chosen architecture from the original
    latency: str  # measured / predicted / none
    anchor_runtime: str
    search_seconds: float
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # final, interleaved
    measured: int = 0
    screened_out: int = 0
    finetunes: int = 0
    multiple: int = 1
    search_chosen: JointCandidate | None = None  # before the final fine-tune, when there was one
    notes: list[str] = field(default_factory=list)

    def speedup(self) -> float | None:
        """The unmodified model's best FP32 p50 over runtimes / the chosen p50 (final interleaved timing)."""
        dense = [v["p50_ms"] for k, v in self.timings.items() if k.startswith("dense")]
        ch = self.timings.get("chosen", {}).get("p50_ms")
        return min(dense) / ch if dense and ch else None

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen.as_dict(), "reason": self.reason, "constraints_met": self.constraints_met,
                "latency": self.latency, "anchor_runtime": self.anchor_runtime,
                "search_seconds": round(self.search_seconds, 2), "timings": self.timings,
                "speedup_vs_best_fp32": None if self.speedup() is None else round(self.speedup(), 3),
                "candidates_evaluated": sum(c.status == "evaluated" for c in self.candidates),
                "candidates_measured": self.measured, "screened_out": self.screened_out,
                "finetunes": self.finetunes, "channel_multiple": self.multiple,
                "dense": {k: c.as_dict() for k, c in self.dense.items()},
                "front": [c.as_dict() for c in self.front],
                "layers": self.space.layer_rows(self.chosen.decision),
                "search_chosen": self.search_chosen.as_dict() if self.search_chosen else None, "notes": self.notes,
                "candidates": [c.as_dict() for c in self.candidates]}


def _latency_mode(target: Target, device: str | None) -> tuple[str, Any]:
    from edgekit.latency.predictor import find_predictor

    predictor = find_predictor(target.name)
    if target.is_host and device in (None, "local"):
        return "measured", predictor
    return ("predicted", predictor) if predictor is not None else ("none", None)


def build_space(model: nn.Module, example: np.ndarray, target: Target, settings: Settings, runtimes: list[str],
                multiple: int) -> JointSpace:
    """The decisions this model and target allow (channel groups from Torch-Pruning, conv / linear layers, sparse
    layers from the target's rules)."""
    import torch

    from edgekit.prune.channels import ChannelPruner
    from edgekit.quant.tflite_backend import list_layers

    dims = settings.dimensions or ("width", "precision", "sparsity")
    pruner = ChannelPruner(copy.deepcopy(model), torch.as_tensor(example))
    sparse: list[str] = []
    if "sparsity" in dims and "litert" in runtimes:
        from edgekit.rules import prunable_layers

        sparse = sorted(prunable_layers(model, target, tuple(example.shape)))
    layers = [la.name for la in list_layers(model)]
    return JointSpace.build(pruner.groups, layers, runtimes, tuple(dims), settings.widths, multiple, sparse,
                            settings.sparsities)


def search_joint(model: nn.Module, data: DataBundle, target: Target, settings: Settings | None = None,
                 workdir: str | Path = "joint-work", *, threads: int = 1, device: str | None = None,
                 progress: Any = None, metric: Any = None) -> JointResult:
    """Searches per-layer width, precision (and sparsity) for `model` on `target`; returns the choice and the front.

    Args:
        model: the trained torch model (not changed; the result holds a pruned copy).
        data: train split for fine-tuning and calibration, test split for scoring (labels optional).
        target: the target (its runtimes, channel multiple, sparse rules; host: latency measured here).
        settings: the search settings (default Settings()).
        workdir: where candidate artifacts are written.
        threads: runtime threads for timing.
        device: a device URI; only None/"local" measures (on the host target).
        progress: a rich Progress.
        metric: the run's quality metric (edgekit.quality; default classification: the search fine-tunes on labels).
    """
    settings = settings or Settings()
    runtimes = [r for r in (settings.runtimes or [r.name for r in target.runtimes]) if r in RUNTIMES]
    if not runtimes:
        raise SettingsError(f"joint: target {target.name} has no runtime the search can build for "
                            f"({list(RUNTIMES)})")
    example = np.ascontiguousarray(data.x_test[:1], np.float32)
    multiple = settings.channel_multiple or target.channel_multiple
    space = build_space(model, example, target, settings, runtimes, multiple)
    labels = data.y_train if data.labelled else _top1(model, data.x_train)
    builder = Builder(model, example, TrainData(data.x_train, labels, data.labelled), settings, Path(workdir),
                      progress)
    latency, predictor = _latency_mode(target, device)
    y_eval = None if data.y_test is None else data.y_test[: settings.eval_inputs]
    ev = Evaluator(builder, runtimes, data.x_test[: settings.eval_inputs], y_eval, settings, threads, latency,
                   predictor, metric)
    constraints = Constraints(settings.max_quality_drop, settings.latency_budget_ms or None,
                              settings.max_size_mb or None, settings.confidence)
    start = time.perf_counter()
    ev.baseline(max(20, settings.final_runs // 4))
    cands = _optimise(space, ev, constraints, settings, progress, start)
    chosen, reason, met = choose(cands, constraints, settings.latency_slack)
    search_seconds = time.perf_counter() - start
    trained = bool(chosen.decision.widths or chosen.decision.sparsity)
    cached = builder.is_cached(chosen.decision)
    final_model = builder.tuned(chosen.decision)
    search_chosen = None
    if settings.final_epochs and trained:
        final_model = copy.deepcopy(final_model)
        builder.finetune(final_model, dict(chosen.decision.sparsity), settings.final_epochs, "final fine-tune")
        search_chosen, chosen = chosen, ev.rescore(chosen, final_model, "chosen-final")
    elif trained and not cached:  # fine-tuned again: the artifact must come from the very model returned
        chosen = ev.rescore(chosen, final_model, "chosen")
    timings = _final_timing(ev, chosen, settings.final_runs) if latency == "measured" else {}
    history = builder.histories.get(chosen.decision.width_key(), [])
    return JointResult(chosen, reason, met, cands, pareto_front([c for c in cands if c.status == "evaluated"
                                                                 and c.drop is not None]),
                       ev.dense, space, final_model, history, latency, ev.anchor_runtime, search_seconds, timings,
                       ev.measured, ev.screened_out, builder.finetunes, multiple, search_chosen,
                       [n for n in (ev.predictor_note,) if n])


def _top1(model: nn.Module, x: np.ndarray) -> np.ndarray:
    from edgekit.train import predict

    return predict(model, x).reshape(len(x), -1).argmax(1).astype(np.int64)


def _limit(cands: list[JointCandidate], constraints: Constraints, slack: float) -> float | None:
    timed = [c.p50_ms for c in cands if c.status == "evaluated" and c.p50_ms is not None and constraints.met(c)]
    return min(timed) * (1 + slack) if timed else None


def _optimise(space: JointSpace, ev: Evaluator, constraints: Constraints, settings: Settings, progress: Any,
              start: float) -> list[JointCandidate]:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    use_latency = ev.latency != "none"
    # The fastest runtime's seeds first: under the time limit, its uniform widths are the candidates most likely to
    # be chosen (the unmodified model's fastest artifact is what they must beat).
    speed = {rt: c.p50_ms if c.p50_ms is not None else math.inf for rt, c in ev.dense.items()}
    seeds = sorted(space.seeds(), key=lambda d: speed.get(d.runtime, math.inf))
    population = max(8, min(24, len(seeds)))
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=settings.seed)
    study = optuna.create_study(directions=["minimize"] * (3 if use_latency else 2), sampler=sampler)
    for d in seeds:
        study.enqueue_trial(space.params(d), user_attrs={"label": d.label})
    seen: dict[str, JointCandidate] = {}
    task = progress.add_task("joint search", total=settings.trials) if progress is not None else None

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        d = space.suggest(trial)
        c = ev.evaluate(d, f"cand-{trial.number:03d}", _limit(list(seen.values()), constraints,
                                                               settings.latency_slack))
        if c.trial < 0:
            c.trial = trial.number
        seen.setdefault(d.key(), c)
        if task is not None:
            progress.advance(task)
        if c.status != "evaluated":
            raise optuna.TrialPruned(f"screened out: estimated {c.screen_ms:.4f} ms")
        for key, v in zip(("quality_drop", "latency", "size"), constraints.violations(c), strict=True):
            trial.set_constraint(key, float(v))
        lat = c.p50_ms if c.p50_ms is not None else math.inf
        return (c.drop, lat, c.size_mb) if use_latency else (c.drop, c.size_mb)

    remaining = max(1.0, settings.max_seconds - (time.perf_counter() - start))
    study.optimize(objective, n_trials=settings.trials, timeout=remaining, catch=())
    if task is not None:
        progress.remove_task(task)
    return list(seen.values())


def _final_timing(ev: Evaluator, chosen: JointCandidate, runs: int) -> dict[str, dict[str, float]]:
    """The unmodified model in every runtime and the chosen artifact, interleaved in one process."""
    from edgekit.devices.timing import time_files

    paths = {f"dense_{rt}": c.path for rt, c in ev.dense.items()}
    if chosen.path not in paths.values():
        paths["chosen"] = chosen.path
    out = time_files({n: (_runtime_of(p), p) for n, p in paths.items()}, ev.x, ev.threads, runs, warmup=10)
    if "chosen" not in out:
        out["chosen"] = out[f"dense_{chosen.decision.runtime}"]
    return out


def _runtime_of(path: Path) -> str:
    return "litert" if path.suffix == ".tflite" else "onnxruntime"
