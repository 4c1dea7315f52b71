"""quantize: search per-layer INT8 policies scored on latency in the artifact's own runtime, write the chosen ones.

For each format (ONNX via onnxruntime.quantization or NNCF, TFLite via litert-torch's PT2E quantizer or the LiteRT
Quantizer) it writes the full INT8 artifact and the chosen policy's artifact (precision "int8" / "mixed", verified
against the float model), the policy as JSON, a Pareto plot and a per-layer table in report.md. Every backend but
PT2E works on the float FILE, so the native routes (edgekit.importers.native: an ONNX file onnx2torch cannot
convert, a .tflite model) quantise without a torch model. See docs/quantization.md.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.contract import Contract
from edgekit.errors import EdgekitError, SettingsError
from edgekit.fileio import copy_atomic

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

BACKENDS = {"onnx": ("onnxruntime", "nncf"), "tflite": ("litert-pt2e", "ai-edge-quantizer"), "pte": ("xnnpack-pt2e",)}
TFLITE_BACKENDS = ("auto", *BACKENDS["tflite"])
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert", "pte": "executorch"}
# Backends that quantise the torch model (the others take the float file, so they run on the native routes).
TORCH_BACKENDS = {"litert-pt2e"}


def contract(settings: Settings) -> Contract:
    return Contract(needs=frozenset({"torch"}), changes=frozenset({"artifacts"}), stale="refuse",
                    stale_note="whose INT8 policy was searched and calibrated for the model before that change",
                    outputs=("quant", "quant_pareto.png", "state/quant_study.db"), native=frozenset(_native_sources(settings)))


def _native_sources(settings: Settings) -> set[str]:
    """Model-file formats it quantises without a torch model: all formats asked for (any, when none are)."""
    sources = {m: set(_native_sources_of(m, settings)) for m in ("onnx", "tflite")}
    if settings.formats:
        return {m for m, ok in sources.items() if set(settings.formats) <= ok}
    return {m for m, ok in sources.items() if ok}


@dataclass(frozen=True)
class Settings:
    formats: tuple[str, ...] = field(default=(), metadata={"help": "formats to quantise (onnx, tflite, pte); empty: "
                                                                   "the target's formats that have a backend"})
    onnx_backend: str = field(default="onnxruntime", metadata={"help": "onnxruntime (QDQ) or nncf (PTQ)"})
    tflite_backend: str = field(default="auto", metadata={
        "help": "litert-pt2e (quantises the torch model), ai-edge-quantizer (the LiteRT Quantizer on the float "
                ".tflite file), or auto: litert-pt2e with a torch model, ai-edge-quantizer without one"})
    trials: int = field(default=30, metadata={"help": "NSGA-II trials of the ONNX search"})
    tflite_trials: int = field(default=0, metadata={"help": "NSGA-II trials in LiteRT; 0: apply the policy chosen "
                                                            "by the ONNX search (each PT2E candidate is a conversion), "
                                                            "or `trials` with the LiteRT Quantizer"})
    pte_trials: int = field(default=0, metadata={"help": "NSGA-II trials timed in ExecuTorch; 0: apply the policy chosen "
                                                         "by the ONNX search (each candidate is a PT2E export)"})
    max_quality_drop: float = field(default=1.0, metadata={"help": "constraint: quality drop in points (from the "
                                                                   "float model it quantises)"})
    chain_budget: bool = field(default=False, metadata={
        "help": "take the run's quality budget (--max-quality-drop, counted from the model as loaded) minus what "
                "earlier stages spent, when it is tighter than max_quality_drop"})
    confidence: float = field(default=0.0, metadata={
        "help": "a policy meets the quality constraint when its drop plus this many paired standard errors (over "
                "the scoring inputs) does (0: the measured drop alone)"})
    latency_budget_ms: float = field(default=0.0, metadata={"help": "constraint: p50 latency in ms (0: none)"})
    max_size_mb: float = field(default=0.0, metadata={"help": "constraint: artifact size in MB (0: none)"})
    latency_slack: float = field(default=0.10, metadata={"help": "choose the lowest drop within this fraction "
                                                                  "of the fastest feasible latency"})
    calibration_inputs: int = field(default=64, metadata={"help": "calibration inputs (from the train split)"})
    eval_inputs: int = field(default=512, metadata={"help": "held-out inputs that score each candidate"})
    timing_runs: int = field(default=20, metadata={"help": "interleaved timing rounds per candidate"})
    final_runs: int = field(default=100, metadata={"help": "interleaved rounds timing float / INT8 / chosen"})
    max_seconds: float = field(default=540.0, metadata={"help": "time limit of one search"})
    nncf_baseline: bool = field(default=False, metadata={"help": "also score NNCF's default INT8 (ONNX)"})
    seed: int = field(default=0, metadata={"help": "sampler seed"})
    workers: int = field(default=1, metadata={"help": "processes working on the ONNX search's shared study (this "
                                                      "one included; more join with `edgekit worker`)"})
    storage: str = field(default="", metadata={"help": "the study's storage: sqlite:///PATH, postgresql://USER@HOST"
                                                       "[:PORT]/DB (several machines) or memory; default: "
                                                       "state/quant_study.db in the run folder"})
    skip_failing_formats: bool = field(default=False, metadata={
        "help": "a format whose INT8 conversion fails is reported and skipped instead of stopping the run"})

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in BACKENDS]
        if bad:
            raise SettingsError(f"quantize: no INT8 backend for formats {bad}; available: {sorted(BACKENDS)}")
        if self.onnx_backend not in BACKENDS["onnx"]:
            raise SettingsError(f"quantize: onnx_backend must be one of {BACKENDS['onnx']}, got {self.onnx_backend}")
        if self.tflite_backend not in TFLITE_BACKENDS:
            raise SettingsError(f"quantize: tflite_backend must be one of {TFLITE_BACKENDS}, got "
                                f"{self.tflite_backend}")
        if self.trials < 1 or self.tflite_trials < 0 or self.pte_trials < 0:
            raise SettingsError("quantize: trials must be >= 1, tflite_trials and pte_trials >= 0")
        if self.max_quality_drop < 0 or self.latency_budget_ms < 0 or self.max_size_mb < 0 or self.confidence < 0:
            raise SettingsError("quantize: constraints and confidence must be >= 0 (0 disables latency and size "
                                "limits)")
        if not 0 <= self.latency_slack < 1:
            raise SettingsError(f"quantize: latency_slack must be in [0, 1), got {self.latency_slack}")
        if self.calibration_inputs < 1 or self.eval_inputs < 8 or self.timing_runs < 5 or self.final_runs < 20:
            raise SettingsError("quantize: need calibration_inputs >= 1, eval_inputs >= 8, timing_runs >= 5, "
                                "final_runs >= 20")
        if not 1 <= self.workers <= 64:
            raise SettingsError(f"quantize: workers must be from 1 to 64, got {self.workers}")
        if self.storage:
            from pathlib import Path

            from edgekit.study import storage_url

            storage_url(self.storage, Path("."))  # one-line error for a bad URL before anything runs
        if self.workers > 1 and self.storage == "memory":
            raise SettingsError("quantize: several workers share a study through a storage, not memory")


def _float_artifact(ctx: RunContext, model: nn.Module, fmt: str) -> Any:
    """The float model it quantises, in `fmt`: a dense float artifact of the current model, else a fresh export."""
    from pathlib import Path

    from edgekit import export as exporters

    for a in ctx.artifacts(format=fmt, precision="fp32", sparse=False, model_version=ctx.model_version):
        return ctx.out / a.path
    module = exporters.get(fmt)
    path = Path(ctx.out / "quant" / f"float{module.SUFFIX}")
    if ctx.native is not None:
        return exporters.export_file(fmt, ctx.native, path)
    return module.export(model, ctx.example_input, path)


def _max_drop(settings: Settings, ctx: RunContext) -> tuple[float, str]:
    """The quality constraint of this search in points, and where it comes from."""
    if not settings.chain_budget or ctx.budget is None:
        return settings.max_quality_drop, "quantize.max_quality_drop"
    left = max(0.0, ctx.budget - ctx.spent_budget())
    if left < settings.max_quality_drop:
        return round(left, 4), f"the run's budget {ctx.budget} pts minus {ctx.spent_budget():.2f} spent before"
    return settings.max_quality_drop, "quantize.max_quality_drop"


def _latency_mode(ctx: RunContext) -> tuple[str, Any, Any]:
    """(measured / predicted / none, predictor, device): edgekit.devices.latency_source decides. A device is
    opened when the search measures somewhere other than in this process (a board, a phone, a farm)."""
    from edgekit.devices import latency_source, open_device

    src = latency_source(ctx.target, ctx.device, for_search=True)
    device = open_device(src.devices[0], target=ctx.target) if src.source == "measured" and not src.local else None
    return src.source, src.predictor, device


def _plan(settings: Settings, ctx: RunContext, fmt: str, float_path: Any, job: _Job) -> Any:
    """The search's shared study: its storage and a name derived from everything it depends on, so a killed run
    resumes its study and a changed input starts a new one."""
    import dataclasses
    import hashlib

    from edgekit.fileio import fingerprint, sha256_file
    from edgekit.study import StudyPlan, storage_url

    data = hashlib.sha256(job.calib.tobytes() + job.x_eval.tobytes()
                          + (b"" if job.y_eval is None else job.y_eval.tobytes())).hexdigest()
    keep = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("workers", "storage")}
    name = fingerprint(fmt, sha256_file(float_path), keep, data, ctx.target.name, ctx.threads,
                       getattr(job.common["device"], "uri", None), job.common["latency"])[:16]
    url = storage_url(settings.storage, ctx.out / "state" / "quant_study.db")
    return StudyPlan(url, f"quant-{fmt}-{name}", workers=settings.workers if fmt == "onnx" else 1)


@dataclass
class _Job:
    """What every format's search shares."""

    model: Any
    settings: Settings
    ctx: Any
    calib: Any
    x_eval: Any
    y_eval: Any
    constraints: Any
    common: dict[str, Any]
    onnx_result: Any = None


def _search_onnx(job: _Job) -> Any:
    from edgekit.quant import nncf_backend, onnx_backend
    from edgekit.quant.driver import search_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.sensitivity import onnx_latency_shares

    settings, ctx, work = job.settings, job.ctx, job.ctx.out / "quant" / "onnx"
    float_onnx = _float_artifact(ctx, job.model, "onnx")
    mod = nncf_backend if settings.onnx_backend == "nncf" else onnx_backend
    backend = (mod.NncfQuantizer if mod is nncf_backend else mod.OnnxQuantizer)(float_onnx, job.calib, work)
    scorer = Scorer(backend, "onnxruntime", float_onnx, job.x_eval, job.y_eval, work, **job.common)
    shares = onnx_latency_shares(float_onnx, backend.layers, job.x_eval, work, threads=ctx.threads)
    plan = _plan(settings, ctx, "onnx", float_onnx, job)
    result = search_runtime(scorer, fmt="onnx", backend_name=mod.NAME, calibrations=mod.CALIBRATIONS,
                            trials=settings.trials, constraints=job.constraints, seed=settings.seed,
                            max_seconds=settings.max_seconds, latency_slack=settings.latency_slack,
                            final_runs=settings.final_runs, shares=shares, progress=ctx.progress,
                            distributed=(dist := _distributed(plan, job, mod.NAME, mod.CALIBRATIONS, work)))
    result.study = {"name": plan.name, "storage": plan.storage, "workers": plan.workers,
                    "worker_exits": dist.workers if dist else []}
    if settings.nncf_baseline:
        nq = nncf_backend.NncfQuantizer(float_onnx, job.calib)
        path = nq.default_int8(work / "nncf-default.onnx")
        result.extra["NNCF default INT8"] = scorer.score_file(path, "NNCF default INT8")
    job.onnx_result = result
    return result


def _search_tflite(job: _Job) -> Any:
    from edgekit.quant import aeq_backend, tflite_backend
    from edgekit.quant.driver import search_runtime, transfer_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.sensitivity import ranking

    settings, ctx, onnx_result = job.settings, job.ctx, job.onnx_result
    float_tfl = _float_artifact(ctx, job.model, "tflite")
    on_file = _tflite_backend(settings, ctx) == aeq_backend.NAME
    if on_file:  # the LiteRT Quantizer on the float file: no torch model in the loop
        mod, backend = aeq_backend, aeq_backend.AeqQuantizer(float_tfl, job.calib)
    else:
        mod, backend = tflite_backend, tflite_backend.TFLiteQuantizer(job.model, ctx.example_input, job.calib)
    scorer = Scorer(backend, "litert", float_tfl, job.x_eval, job.y_eval, ctx.out / "quant" / "tflite",
                    suffix=".tflite", **job.common)
    kw = {"fmt": "tflite", "backend_name": mod.NAME, "calibrations": mod.CALIBRATIONS,
          "constraints": job.constraints, "final_runs": settings.final_runs}
    if on_file or settings.tflite_trials or onnx_result is None:
        from edgekit.quant.search import Distributed

        # The ONNX search's layer names are torch module names; a .tflite file's layers are its weight tensors.
        ranked = ranking(onnx_result.sensitivity) if onnx_result and not on_file else None
        trials = settings.tflite_trials or (settings.trials if on_file else 1)
        # TFLite candidates are made in this process (a worker would need the model): one process, its study
        plan = _plan(settings, ctx, "tflite", float_tfl, job)
        return search_runtime(scorer, trials=trials, seed=settings.seed, max_seconds=settings.max_seconds,
                              latency_slack=settings.latency_slack, ranked=ranked, progress=ctx.progress,
                              distributed=Distributed(plan, fresh=not ctx.resume) if plan.persistent else None, **kw)
    return transfer_runtime(scorer, onnx_result.chosen.policy, source="onnxruntime", **kw)


def _tflite_backend(settings: Settings, ctx: RunContext) -> str:
    if settings.tflite_backend != "auto":
        return settings.tflite_backend
    return "ai-edge-quantizer" if ctx.native is not None else "litert-pt2e"


def _distributed(plan: Any, job: _Job, backend_name: str, calibrations: tuple[str, ...], work: Any) -> Any:
    """The ONNX search's Distributed: its study, and how the other workers start (after the anchor is timed)."""
    from edgekit.quant.distributed import write_onnx_spec
    from edgekit.quant.search import Distributed
    from edgekit.study import launch_workers

    if not plan.persistent:
        return None
    settings, ctx = job.settings, job.ctx

    def spawn(scorer: Any, remaining: float | None) -> list[Any]:
        if plan.workers < 2:
            return []
        spec = write_onnx_spec(work / "worker", scorer, backend_name, job.calib,
                               calibrations=calibrations, constraints=job.constraints,
                               use_latency=scorer.latency != "none", trials=settings.trials, seed=settings.seed,
                               plan=plan, target=ctx.target.name, device=ctx.device, max_seconds=remaining)
        return launch_workers(spec, plan.workers - 1)

    return Distributed(plan, spawn=spawn, fresh=not ctx.resume)


def _search_pte(job: _Job) -> Any:
    from edgekit.quant import executorch_backend

    return executorch_backend.run(job.ctx, job.model, job.calib, job.x_eval, job.y_eval, job.common, job.settings,
                                  job.constraints, job.onnx_result, _float_artifact(job.ctx, job.model, "pte"))


# format -> search (ONNX first: TFLite and ExecuTorch reuse its policy)
SEARCHES = {"onnx": _search_onnx, "tflite": _search_tflite, "pte": _search_pte}


def _formats(settings: Settings, ctx: RunContext) -> tuple[list[str], dict[str, str]]:
    """(the formats to quantise: the setting, else those the recipe's export stage writes, else the target's;
    those left out on a native route, with why)."""
    exported = next((s.settings.formats for s in (ctx.recipe.stages if ctx.recipe else ())
                     if s.name == "export" and getattr(s.settings, "formats", ())), ())
    fmts = [f for f in BACKENDS if f in (settings.formats or exported or ctx.target.formats)]
    native = ctx.native
    if native is None:
        return fmts, {}
    makeable = [f for f in fmts if f in _native_sources_of(native.format, settings)]
    return makeable, {f: f"needs a torch model ({native.blocker})" for f in fmts if f not in makeable}


def _native_sources_of(model_format: str, settings: Settings) -> list[str]:
    """Formats quantised without a torch model from a model file of `model_format`."""
    from edgekit import export as exporters

    return [f for f in BACKENDS if f in exporters.file_formats(model_format)
            and (f != "tflite" or settings.tflite_backend not in TORCH_BACKENDS)]


def _run_searches(fmts: list[str], job: _Job, settings: Settings) -> tuple[list[Any], dict[str, str]]:
    results, failed = [], {}
    try:
        for fmt in fmts:
            try:
                results.append(SEARCHES[fmt](job))
            except EdgekitError as e:
                if not settings.skip_failing_formats:
                    raise
                failed[fmt] = str(e)
    finally:
        if job.common["device"] is not None:
            job.common["device"].close()
    return results, failed


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    from edgekit.quant.report import markdown, plot_pareto
    from edgekit.quant.search import Constraints

    fmts, failed = _formats(settings, ctx)
    if not fmts:
        why = f" ({'; '.join(f'{k}: {v}' for k, v in failed.items())})" if failed else ""
        raise SettingsError(f"quantize: target {ctx.target.name} has no format with an INT8 backend "
                            f"({sorted(BACKENDS)}) for this model{why}")
    latency, predictor, device = _latency_mode(ctx)
    max_drop, drop_source = _max_drop(settings, ctx)
    job = _Job(model, settings, ctx, ctx.data.calibration(settings.calibration_inputs).astype("float32"),
               ctx.data.x_test[: settings.eval_inputs].astype("float32"),
               None if ctx.data.y_test is None else ctx.data.y_test[: settings.eval_inputs],
               Constraints(max_drop, settings.latency_budget_ms or None, settings.max_size_mb or None,
                           settings.confidence),
               {"threads": ctx.threads, "latency": latency, "predictor": predictor,
                "timing_runs": settings.timing_runs, "device": device})
    results, failed = _run_searches(fmts, job, settings)
    if not results:
        raise SettingsError(f"quantize: no format could be quantised ({'; '.join(f'{k}: {v}' for k, v in failed.items())})")
    _write_outputs(ctx, results)
    plot = plot_pareto(ctx.out / "quant_pareto.png", results, f"{ctx.report.get('model')} → {ctx.target.name}")
    for r in results:
        ctx.add_section(f"Quantisation: {r.fmt} ({r.runtime})", markdown(r, plot.name if plot else None))
    for fmt, why in failed.items():
        ctx.add_section(f"Quantisation: {fmt}", f"Not quantised: {why}")
    main = results[0]
    ctx.record(metrics={"quality_metric": main.metric, "quality_before": main.float_quality,
                        "quality_after": main.chosen.quality, "quality_drop": round(main.chosen.drop, 4),
                        "int8_quality_drop": round(main.int8.drop, 4), "constraints_met": main.constraints_met,
                        "policy_met_bar": main.verdict()["met"], "max_quality_drop": max_drop},
               details={"searches": [r.as_dict() for r in results], "latency": latency, "failed_formats": failed,
                        "latency_device": getattr(device, "uri", None),
                        "plot": plot.name if plot else None, "max_quality_drop_from": drop_source})
    from edgekit.report import ChainPoint

    precision = "mixed" if any(a.precision == "mixed" for a in ctx.artifacts(stage_index=ctx._stage_index)) else "int8"
    ctx.set_after(ChainPoint(quality=main.chosen.quality, precision=precision))
    shutil.rmtree(ctx.out / "quant", ignore_errors=True)  # candidates and float exports; the kept ones were copied
    return model


def _write_outputs(ctx: RunContext, results: list[Any]) -> None:
    """Copies full INT8 and the chosen policy's artifact into artifacts/ and registers them for verify/measure."""
    import math

    from edgekit import export as exporters
    from edgekit.quant.policy import FLOAT

    for r in results:
        exporter = exporters.get(r.fmt)
        suffix = r.int8.path.suffix
        for kind, cand in (("int8", r.int8), ("mixed", r.chosen)):
            if kind == "mixed" and cand is r.int8:
                continue
            dest = copy_atomic(cand.path, ctx.artifacts_dir / f"model_{kind}{suffix}")
            companions = None  # a format's sidecar (pte: delegation, per-layer accuracy) travels with it
            if hasattr(exporter, "sidecar") and exporter.sidecar(cand.path).is_file():
                copy_atomic(exporter.sidecar(cand.path), exporter.sidecar(dest))
                companions = [exporter.sidecar(dest).relative_to(ctx.out).as_posix()]
            precision = "mixed" if any(m == FLOAT for m in cand.policy.layers.values()) else "int8"
            # INT8 logits differ from float by design: check top-1 agreement, allowing for the spread of a
            # 32-input verification sample around the agreement the search measured on the eval set.
            a = cand.agreement
            min_top1 = max(0.0, a - 3 * math.sqrt(max(a * (1 - a), 0.01) / 32) - 0.02)
            ctx.add_artifact(dest, r.fmt, RUNTIMES[r.fmt], precision=precision, sparse=False, companions=companions,
                             reference="float", tolerance={"max_abs_err": None, "min_top1": round(min_top1, 3)},
                             policy=f"artifacts/quant_policy_{r.fmt}.json" if kind == "mixed" else None,
                             quant={"drop": round(cand.drop, 4), "quality": cand.quality,
                                    "sqnr_db": round(cand.sqnr_db, 2), "backend": r.backend},
                             **(exporter.artifact_meta(dest) if hasattr(exporter, "artifact_meta") else {}))
            if hasattr(exporter, "report_section"):
                ctx.add_section(*exporter.report_section(dest))
        policy = r.chosen.policy.save(ctx.artifacts_dir / f"quant_policy_{r.fmt}.json")
        ctx.add_file(policy, "quant policy", format=r.fmt)
