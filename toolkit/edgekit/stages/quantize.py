"""quantize: search per-layer INT8 policies scored on latency in the artifact's own runtime, write the chosen ones.

For each format (ONNX via onnxruntime.quantization, TFLite via litert-torch's PT2E quantizer) it writes the full
INT8 artifact and the chosen policy's artifact (precision "int8" / "mixed", verified against the float model),
the policy as JSON, a Pareto plot and a per-layer table in report.md. See docs/quantization.md.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.contract import Contract
from edgekit.errors import EdgekitError, SettingsError

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CONTRACT = Contract(changes=frozenset({"artifacts"}), stale="refuse",
                    stale_note="whose INT8 policy was searched and calibrated for the model before that change",
                    outputs=("quant", "quant_pareto.png"))
BACKENDS = {"onnx": ("onnxruntime", "nncf"), "tflite": ("litert-pt2e",)}
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert"}


@dataclass(frozen=True)
class Settings:
    formats: tuple[str, ...] = field(default=(), metadata={"help": "formats to quantise (onnx, tflite); empty: the "
                                                                   "target's formats that have a backend"})
    onnx_backend: str = field(default="onnxruntime", metadata={"help": "onnxruntime (QDQ) or nncf (PTQ)"})
    trials: int = field(default=30, metadata={"help": "NSGA-II trials of the ONNX search"})
    tflite_trials: int = field(default=0, metadata={"help": "NSGA-II trials in LiteRT; 0: apply the policy chosen "
                                                            "by the ONNX search (each TFLite candidate is a conversion)"})
    max_quality_drop: float = field(default=1.0, metadata={"help": "constraint: quality drop in points (from the "
                                                                   "float model it quantises)"})
    chain_budget: bool = field(default=False, metadata={
        "help": "take the run's quality budget (--max-quality-drop, counted from the model as loaded) minus what "
                "earlier stages spent, when it is tighter than max_quality_drop"})
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
    skip_failing_formats: bool = field(default=False, metadata={
        "help": "a format whose INT8 conversion fails is reported and skipped instead of stopping the run"})

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in BACKENDS]
        if bad:
            raise SettingsError(f"quantize: no INT8 backend for formats {bad}; available: {sorted(BACKENDS)}")
        if self.onnx_backend not in BACKENDS["onnx"]:
            raise SettingsError(f"quantize: onnx_backend must be one of {BACKENDS['onnx']}, got {self.onnx_backend}")
        if self.trials < 1 or self.tflite_trials < 0:
            raise SettingsError("quantize: trials must be >= 1 and tflite_trials >= 0")
        if self.max_quality_drop < 0 or self.latency_budget_ms < 0 or self.max_size_mb < 0:
            raise SettingsError("quantize: constraints must be >= 0 (0 disables latency and size limits)")
        if not 0 <= self.latency_slack < 1:
            raise SettingsError(f"quantize: latency_slack must be in [0, 1), got {self.latency_slack}")
        if self.calibration_inputs < 1 or self.eval_inputs < 8 or self.timing_runs < 5 or self.final_runs < 20:
            raise SettingsError("quantize: need calibration_inputs >= 1, eval_inputs >= 8, timing_runs >= 5, "
                                "final_runs >= 20")


def _float_artifact(ctx: RunContext, model: nn.Module, fmt: str) -> Any:
    """The float model it quantises, in `fmt`: a dense float artifact of the current model, else a fresh export."""
    from pathlib import Path

    from edgekit import export as exporters

    for a in ctx.artifacts(format=fmt, precision="fp32", sparse=False, model_version=ctx.model_version):
        return ctx.out / a.path
    module = exporters.get(fmt)
    return module.export(model, ctx.example_input, Path(ctx.out / "quant" / f"float{module.SUFFIX}"))


def _max_drop(settings: Settings, ctx: RunContext) -> tuple[float, str]:
    """The quality constraint of this search in points, and where it comes from."""
    if not settings.chain_budget or ctx.budget is None:
        return settings.max_quality_drop, "quantize.max_quality_drop"
    left = max(0.0, ctx.budget - ctx.spent_budget())
    if left < settings.max_quality_drop:
        return round(left, 4), f"the run's budget {ctx.budget} pts minus {ctx.spent_budget():.2f} spent before"
    return settings.max_quality_drop, "quantize.max_quality_drop"


def _latency_mode(ctx: RunContext) -> tuple[str, Any]:
    from edgekit.quant.driver import load_predictor

    if ctx.target.is_host and ctx.device in (None, "local"):
        return "measured", None
    predictor = load_predictor(ctx.target.name)
    return ("predicted", predictor) if predictor is not None else ("none", None)


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
    result = search_runtime(scorer, fmt="onnx", backend_name=mod.NAME, calibrations=mod.CALIBRATIONS,
                            trials=settings.trials, constraints=job.constraints, seed=settings.seed,
                            max_seconds=settings.max_seconds, latency_slack=settings.latency_slack,
                            final_runs=settings.final_runs, shares=shares, progress=ctx.progress)
    if settings.nncf_baseline:
        nq = nncf_backend.NncfQuantizer(float_onnx, job.calib)
        path = nq.default_int8(work / "nncf-default.onnx")
        result.extra["NNCF default INT8"] = scorer.score_file(path, "NNCF default INT8")
    job.onnx_result = result
    return result


def _search_tflite(job: _Job) -> Any:
    from edgekit.quant import tflite_backend
    from edgekit.quant.driver import search_runtime, transfer_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.sensitivity import ranking

    settings, ctx, onnx_result = job.settings, job.ctx, job.onnx_result
    float_tfl = _float_artifact(ctx, job.model, "tflite")
    backend = tflite_backend.TFLiteQuantizer(job.model, ctx.example_input, job.calib)
    scorer = Scorer(backend, "litert", float_tfl, job.x_eval, job.y_eval, ctx.out / "quant" / "tflite",
                    suffix=".tflite", **job.common)
    kw = {"fmt": "tflite", "backend_name": tflite_backend.NAME, "calibrations": tflite_backend.CALIBRATIONS,
          "constraints": job.constraints, "final_runs": settings.final_runs}
    if settings.tflite_trials or onnx_result is None:
        ranked = ranking(onnx_result.sensitivity) if onnx_result else None  # ONNX's, to skip a costly pass
        return search_runtime(scorer, trials=max(settings.tflite_trials, 1), seed=settings.seed,
                              max_seconds=settings.max_seconds, latency_slack=settings.latency_slack,
                              ranked=ranked, progress=ctx.progress, **kw)
    return transfer_runtime(scorer, onnx_result.chosen.policy, source="onnxruntime", **kw)


SEARCHES = {"onnx": _search_onnx, "tflite": _search_tflite}  # format -> search (ONNX first: TFLite reuses it)


def _formats(settings: Settings, ctx: RunContext) -> list[str]:
    """The formats to quantise: the setting, else those the recipe's export stage writes, else the target's."""
    exported = next((s.settings.formats for s in (ctx.recipe.stages if ctx.recipe else ())
                     if s.name == "export" and getattr(s.settings, "formats", ())), ())
    return [f for f in BACKENDS if f in (settings.formats or exported or ctx.target.formats)]


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    from edgekit.quant.report import markdown, plot_pareto
    from edgekit.quant.search import Constraints

    fmts = _formats(settings, ctx)
    if not fmts:
        raise SettingsError(f"quantize: target {ctx.target.name} has no format with an INT8 backend "
                            f"({sorted(BACKENDS)})")
    latency, predictor = _latency_mode(ctx)
    max_drop, drop_source = _max_drop(settings, ctx)
    job = _Job(model, settings, ctx, ctx.data.calibration(settings.calibration_inputs).astype("float32"),
               ctx.data.x_test[: settings.eval_inputs].astype("float32"),
               None if ctx.data.y_test is None else ctx.data.y_test[: settings.eval_inputs],
               Constraints(max_drop, settings.latency_budget_ms or None, settings.max_size_mb or None),
               {"threads": ctx.threads, "latency": latency, "predictor": predictor,
                "timing_runs": settings.timing_runs})
    results, failed = [], {}
    for fmt in fmts:
        try:
            results.append(SEARCHES[fmt](job))
        except EdgekitError as e:
            if not settings.skip_failing_formats:
                raise
            failed[fmt] = str(e)
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
                        "plot": plot.name if plot else None, "max_quality_drop_from": drop_source})
    from edgekit.report import ChainPoint

    precision = "mixed" if any(a.precision == "mixed" for a in ctx.artifacts(stage_index=ctx._stage_index)) else "int8"
    ctx.set_after(ChainPoint(quality=main.chosen.quality, precision=precision))
    shutil.rmtree(ctx.out / "quant", ignore_errors=True)  # candidates and float exports; the kept ones were copied
    return model


def _write_outputs(ctx: RunContext, results: list[Any]) -> None:
    """Copies full INT8 and the chosen policy's artifact into artifacts/ and registers them for verify/measure."""
    import math

    from edgekit.quant.policy import FLOAT

    for r in results:
        suffix = r.int8.path.suffix
        for kind, cand in (("int8", r.int8), ("mixed", r.chosen)):
            if kind == "mixed" and cand is r.int8:
                continue
            dest = ctx.artifacts_dir / f"model_{kind}{suffix}"
            shutil.copyfile(cand.path, dest)
            precision = "mixed" if any(m == FLOAT for m in cand.policy.layers.values()) else "int8"
            # INT8 logits differ from float by design: check top-1 agreement, allowing for the spread of a
            # 32-input verification sample around the agreement the search measured on the eval set.
            a = cand.agreement
            min_top1 = max(0.0, a - 3 * math.sqrt(max(a * (1 - a), 0.01) / 32) - 0.02)
            ctx.add_artifact(dest, r.fmt, RUNTIMES[r.fmt], precision=precision, sparse=False,
                             reference="float", tolerance={"max_abs_err": None, "min_top1": round(min_top1, 3)},
                             policy=f"artifacts/quant_policy_{r.fmt}.json" if kind == "mixed" else None,
                             quant={"drop": round(cand.drop, 4), "quality": cand.quality,
                                    "sqnr_db": round(cand.sqnr_db, 2)})
        policy = r.chosen.policy.save(ctx.artifacts_dir / f"quant_policy_{r.fmt}.json")
        ctx.add_file(policy, "quant policy", format=r.fmt)
