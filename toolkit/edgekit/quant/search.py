"""Multi-objective policy search (quality drop, latency, size) with Optuna's NSGA-II, seeded by sensitivity.

The first generation is not random: it holds full INT8 (per-channel and per-tensor) and the policies that keep the
k most sensitive layers float (k = 1, 2, 3, 5, 8, ...), so the search starts on the front a person would try by
hand and NSGA-II's crossover and mutation explore from there. Constraints are Optuna constraints (feasible first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, SettingsError
from edgekit.quant.evaluate import Candidate
from edgekit.quant.policy import FLOAT, INT8_CHANNEL, INT8_TENSOR, MODES, Layer, Policy
from edgekit.search_core import Constraints


def seed_policies(layers: list[Layer], ranked: list[str], calibration: str, max_seeds: int) -> list[Policy]:
    """Full INT8, then 'keep the k most sensitive layers float' for growing k (per-channel and per-tensor)."""
    names = [la.name for la in layers]
    seeds = [Policy.uniform(names, INT8_CHANNEL, calibration=calibration, label="full INT8 per-channel"),
             Policy.uniform(names, INT8_TENSOR, calibration=calibration, label="full INT8 per-tensor")]
    k, ks = 1, []
    while k < len(names):
        ks.append(k)
        k = max(k + 1, int(round(k * 1.6)))
    for k in ks:
        keep = set(ranked[:k])
        for mode in (INT8_CHANNEL, INT8_TENSOR):
            seeds.append(Policy(layers={n: FLOAT if n in keep else mode for n in names}, calibration=calibration,
                                label=f"top-{k} sensitive float, rest {mode}"))
    return seeds[:max_seeds]


def make_objective(layers: list[Layer], calibrations: tuple[str, ...], constraints: Constraints, use_latency: bool,
                   score: Callable[[Policy, str], Candidate], *, prefix: str = "cand",
                   on_candidate: Callable[[Policy, Candidate], None] | None = None) -> Callable[[Any], tuple]:
    """The search's Optuna objective: a trial's parameters -> a Policy -> `score` -> (drop, p50, size) or (drop,
    size), with the constraints set on the trial and the candidate's figures kept in its user attributes (so a
    coordinator can read trials other workers ran)."""
    import optuna

    has_set = hasattr(optuna.trial.Trial, "set_constraint")

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        trial.set_user_attr("worker", prefix)  # which process ran it (a dead worker's trial is found by it)
        layer_modes = {la.name: trial.suggest_categorical(la.name, MODES) for la in layers}
        cal = trial.suggest_categorical("calibration", calibrations)
        sym = trial.suggest_categorical("symmetric", [False, True])
        label = trial.user_attrs.get("label") or f"trial {trial.number}"
        policy = Policy(layers=layer_modes, calibration=cal, symmetric_activations=sym, label=label)
        try:
            c = score(policy, f"{prefix}-{trial.number:03d}")
        except EdgekitError as e:  # the backend cannot make this policy (e.g. a calibration method on this model)
            trial.set_user_attr("failed", str(e)[:300])
            raise optuna.TrialPruned(str(e)) from None
        if c.trial < 0:
            c.trial = trial.number
        if on_candidate is not None:
            on_candidate(policy, c)
        violations = [float(v) for v in constraints.violations(c)]
        if has_set:
            for key, v in zip(("quality_drop", "latency", "size"), violations, strict=True):
                trial.set_constraint(key, v)
        else:
            trial.set_user_attr("constraints", violations)
        trial.set_user_attr("candidate", candidate_attrs(c))
        lat = c.p50_ms if c.p50_ms is not None else math.inf
        return (c.drop, lat, c.size_mb) if use_latency else (c.drop, c.size_mb)

    return objective


def candidate_attrs(c: Candidate) -> dict[str, Any]:
    """What a trial records of its candidate (JSON)."""
    keep = {k: v for k, v in c.extra.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return {"quality": c.quality, "drop": c.drop, "drop_se": c.drop_se, "sqnr_db": c.sqnr_db,
            "agreement": c.agreement, "size_bytes": c.size_bytes, "p50_ms": c.p50_ms, "p50_raw_ms": c.p50_raw_ms,
            "latency_source": c.latency_source, "path": str(c.path), "extra": keep}


def candidate_from_trial(t: Any, layers: list[Layer]) -> Candidate | None:
    """The candidate a finished trial (of any worker) scored, from its user attributes."""
    a = t.user_attrs.get("candidate")
    if not a:
        return None
    policy = Policy(layers={la.name: t.params[la.name] for la in layers}, calibration=t.params["calibration"],
                    symmetric_activations=t.params["symmetric"], label=t.user_attrs.get("label") or
                    f"trial {t.number}")
    return Candidate(policy=policy, path=Path(a["path"]), quality=a["quality"], drop=a["drop"],
                     sqnr_db=a["sqnr_db"], agreement=a["agreement"], size_bytes=a["size_bytes"],
                     p50_ms=a["p50_ms"], p50_raw_ms=a["p50_raw_ms"], latency_source=a["latency_source"],
                     trial=t.number, drop_se=a.get("drop_se", 0.0),  # studies older than the margin lack it
                     extra={**a.get("extra", {}), "worker_trial": True})


@dataclass
class Distributed:
    """How a search is shared (edgekit.study): the plan, and what starts the other workers once the study exists
    (None: this process only)."""

    plan: Any
    spawn: Callable[[], list[Any]] | None = None
    fresh: bool = False
    workers: list[dict[str, Any]] = field(default_factory=list)  # pid and exit code of each started worker


def run_search(layers: list[Layer], ranked: list[str], score: Callable[[Policy, str], Candidate], *,
               trials: int, calibrations: tuple[str, ...], constraints: Constraints, seed: int = 0,
               max_seconds: float | None = None, use_latency: bool = True, progress: object = None,
               distributed: Distributed | None = None) -> list[Candidate]:
    """Runs NSGA-II over per-layer modes + calibration + symmetric activations; returns every unique candidate.

    Args:
        layers: quantisable layers.
        ranked: layer names, most sensitive first (seeds the first generation).
        score: evaluates a policy (name = artifact stem); identical policies should be cached by the caller.
        trials: Optuna trials of the whole study (duplicates proposed by the sampler cost nothing).
        calibrations: activation calibration methods the backend offers.
        constraints: feasibility limits.
        use_latency: latency is an objective (False when it is unavailable for the target).
        distributed: a shared study (storage, other workers); None: an in-memory study in this process.
    """
    import optuna

    from edgekit import study as studies

    optuna.logging.set_verbosity(logging.WARNING)
    if not calibrations:
        raise SettingsError("search: the backend offers no calibration method")
    population = population_size(trials)
    sampler = nsga_sampler(trials, seed)
    directions = ["minimize", "minimize", "minimize"] if use_latency else ["minimize", "minimize"]
    seeds = [({**p.layers, "calibration": p.calibration, "symmetric": p.symmetric_activations}, {"label": p.label})
             for p in seed_policies(layers, ranked, calibrations[0], max_seeds=max(population, trials // 2))]
    plan = distributed.plan if distributed else studies.StudyPlan("memory", "quant")
    study = studies.open_study(plan, directions, sampler, seeds, fresh=bool(distributed and distributed.fresh))
    seen: dict[str, Candidate] = {}
    task = progress.add_task("policy search", total=trials) if progress is not None else None  # type: ignore

    def on_candidate(policy: Policy, c: Candidate) -> None:
        seen.setdefault(policy.key(), c)

    def after_trial(st: Any, _t: Any) -> None:
        if task is not None:
            progress.update(task, completed=studies.finished(st))  # type: ignore[attr-defined]

    objective = make_objective(layers, calibrations, constraints, use_latency, score, on_candidate=on_candidate)
    procs = distributed.spawn() if distributed and distributed.spawn else []
    try:
        studies.optimize(study, objective, trials, max_seconds, after_trial=after_trial)
    except BaseException:
        for p in procs:  # this process failed or was interrupted: its workers stop with it
            p.terminate()
        raise
    finally:
        workers = studies.wait_workers(procs, timeout=(max_seconds or 3600) + 120)
        if distributed is not None:
            distributed.workers = workers
    if task is not None:
        progress.remove_task(task)  # type: ignore[attr-defined]
    for t in studies.complete_trials(study):  # trials of other workers (or of an earlier, interrupted run)
        c = candidate_from_trial(t, layers)
        if c is not None:
            seen.setdefault(c.policy.key(), c)
    return sorted(seen.values(), key=lambda c: c.trial)


def population_size(trials: int) -> int:
    """NSGA-II's generation size for a search of `trials` trials (every worker uses the same)."""
    return max(6, min(20, trials // 3))


def nsga_sampler(trials: int, seed: int) -> Any:
    """The search's sampler (a worker passes seed + its index). Constraints reach NSGA-II through
    Trial.set_constraint (optuna >= 5; feasible candidates dominate), or the older constraints_func on optuna 4."""
    import optuna

    extra = {} if hasattr(optuna.trial.Trial, "set_constraint") else {
        "constraints_func": lambda t: t.user_attrs["constraints"]}
    return optuna.samplers.NSGAIISampler(population_size=population_size(trials), seed=seed, **extra)
