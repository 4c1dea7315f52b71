"""quantize: per-layer INT8 policies searched on latency in each format's own runtime (edgekit.quant.run); this
stage records the full INT8 and the chosen policy's artifacts (verified against the float model), the policy as JSON,
a Pareto plot and a per-layer table. Every backend but PT2E works on the float FILE, so the native routes (a model
without a torch form) quantise too. See docs/quantization.md.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import child
from edgekit.contract import Contract
from edgekit.errors import SettingsError
from edgekit.fileio import copy_atomic
from edgekit.quant.settings import (
    BACKENDS,
    RUNTIMES,
    Settings,
    formats_to_quantize,
    input_counts,
    native_formats,
)

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

def contract(settings: Settings) -> Contract:
    from edgekit import export as exporters

    native = {m for m in ("onnx", "tflite")
              if (ok := set(native_formats(m, settings, exporters.file_formats(m))))
              and (not settings.formats or set(settings.formats) <= ok)}
    return Contract(needs=frozenset({"torch"}), changes=frozenset({"artifacts"}), stale="refuse",
                    stale_note="whose INT8 policy was searched and calibrated for the model before that change",
                    outputs=("quant", "quant_pareto.png", "state/quant_study.db"), native=frozenset(native))


def _float_file(ctx: RunContext, model: Any, fmt: str) -> Path:
    """The float model a format's search quantises: a dense float artifact of the current model, else an export."""
    from edgekit import export as exporters

    for a in ctx.artifacts(format=fmt, precision="fp32", sparse=False, model_version=ctx.model_version):
        return ctx.out / a.path
    module, original = exporters.get(fmt), exporters.original_file(ctx.bundle, fmt, ctx.model_version, model,
                                                                   ctx.reference)
    path = ctx.out / "quant" / f"float{module.SUFFIX}"
    if ctx.native is not None:
        return exporters.export_file(fmt, ctx.native, path)
    if original is not None:
        return original
    kwargs = exporters.export_kwargs(module, ctx.target, None, ctx.signature)
    # big weights: in a child process, which takes the converter's memory with it (edgekit.child)
    isolated = child.for_model(model)
    return isolated(f"{fmt} export", module.export, model, ctx.example_input, path, **kwargs)


def _max_drop(settings: Settings, ctx: RunContext) -> tuple[float, str]:
    """The quality constraint of this search in points, and where it comes from."""
    if not settings.chain_budget or ctx.budget is None:
        return settings.max_quality_drop, "quantize.max_quality_drop"
    left = max(0.0, ctx.budget - ctx.spent_budget())
    if left < settings.max_quality_drop:
        return round(left, 4), f"the run's budget {ctx.budget} pts minus {ctx.spent_budget():.2f} spent before"
    return settings.max_quality_drop, "quantize.max_quality_drop"


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    from edgekit import export as exporters
    from edgekit.quant.report import markdown, plot_pareto
    from edgekit.quant.run import QuantJob, quantize_formats
    from edgekit.report import ChainPoint
    from edgekit.search_core import Constraints

    exported = next((s.settings.formats for s in (ctx.recipe.stages if ctx.recipe else ())
                     if s.name == "export" and getattr(s.settings, "formats", ())), ())
    fmts, failed = formats_to_quantize(settings, exported or ctx.target.formats, ctx.native, exporters.file_formats)
    for fmt, why in failed.items():
        ctx.skip(fmt, why)
    if not fmts:
        why = f" ({'; '.join(f'{k}: {v}' for k, v in failed.items())})" if failed else ""
        raise SettingsError(f"quantize: target {ctx.target.name} has no format with an INT8 backend "
                            f"({sorted(BACKENDS)}) for this model{why}")
    max_drop, drop_source = _max_drop(settings, ctx)
    y, x = ctx.data.y_test, ctx.data.x_test
    n_cal, n_eval, fewer = input_counts(settings, x[:1].nbytes)
    job = QuantJob(model, settings, lambda fmt: _float_file(ctx, model, fmt), ctx.example_input,
                   ctx.data.calibration(n_cal).astype("float32"), x[:n_eval].astype("float32"),
                   None if y is None else y[:n_eval], x[:8],
                   Constraints(max_drop, settings.latency_budget_ms or None, settings.max_size_mb or None,
                               settings.confidence),
                   ctx.out / "quant", ctx.out / "state" / "quant_study.db", ctx.target, ctx.threads, ctx.device,
                   fresh=not ctx.resume, native=ctx.native is not None, progress=ctx.progress, metric=ctx.metric)
    results, more = quantize_formats(job, fmts)
    for fmt, why in more.items():  # one line each; the float artifacts stand
        ctx.skip(fmt, why)
    if not results:
        ctx.record(details={"failed_formats": more})
        shutil.rmtree(ctx.out / "quant", ignore_errors=True)
        return model
    _write_outputs(ctx, results)
    plot = plot_pareto(ctx.out / "quant_pareto.png", results, f"{ctx.report.get('model')} → {ctx.target.name}")
    for r in results:
        ctx.add_section(f"Quantisation: {r.fmt} ({r.runtime})", markdown(r, plot.name if plot else None))
    for fmt, why in more.items():
        ctx.add_section(f"Quantisation: {fmt}", f"Not quantised: {why}")
    main = results[0]
    ctx.record(metrics={"quality_metric": main.metric, "quality_before": main.float_quality,
                        "quality_after": main.chosen.quality, "quality_drop": round(main.chosen.drop, 4),
                        "int8_quality_drop": round(main.int8.drop, 4), "constraints_met": main.constraints_met,
                        "policy_met_bar": main.verdict()["met"], "max_quality_drop": max_drop},
               details={"searches": [r.as_dict() for r in results], "latency": job.common["latency"], "inputs": fewer,
                        "failed_formats": more, "latency_device": getattr(job.common["device"], "uri", None),
                        "plot": plot.name if plot else None, "max_quality_drop_from": drop_source})
    precision = "mixed" if any(a.precision == "mixed" for a in ctx.artifacts(stage_index=ctx._stage_index)) else "int8"
    ctx.set_after(ChainPoint(quality=main.chosen.quality, precision=precision))
    shutil.rmtree(ctx.out / "quant", ignore_errors=True)  # candidates and float exports; the kept ones were copied
    return model


def _write_outputs(ctx: RunContext, results: list[Any]) -> None:
    """Copies full INT8 and the chosen policy's artifact into artifacts/ and registers them for verify/measure."""
    from edgekit import export as exporters
    from edgekit.quant.policy import FLOAT

    for r in results:
        exporter = exporters.get(r.fmt)
        for kind, cand in (("int8", r.int8), ("mixed", r.chosen)):
            if kind == "mixed" and cand is r.int8:
                continue
            dest = copy_atomic(cand.path, ctx.artifacts_dir / f"model_{kind}{r.int8.path.suffix}")
            companions = None  # a format's sidecar (pte: delegation, per-layer accuracy) travels with it
            if hasattr(exporter, "sidecar") and exporter.sidecar(cand.path).is_file():
                copy_atomic(exporter.sidecar(cand.path), exporter.sidecar(dest))
                companions = [exporter.sidecar(dest).relative_to(ctx.out).as_posix()]
            # INT8 logits differ from float by design: check top-1 agreement, allowing for the spread of a
            # 32-input verification sample around the agreement the search measured on the eval set.
            a = cand.agreement
            min_top1 = None if a is None else round(max(0.0, a - 3 * math.sqrt(max(a * (1 - a), 0.01) / 32) - 0.02), 3)
            ctx.add_artifact(dest, r.fmt, RUNTIMES[r.fmt], sparse=False, companions=companions, reference="float",
                             precision="mixed" if FLOAT in cand.policy.layers.values() else "int8",
                             tolerance={"max_abs_err": None, "min_top1": min_top1},
                             policy=f"artifacts/quant_policy_{r.fmt}.json" if kind == "mixed" else None,
                             quant={"drop": round(cand.drop, 4), "quality": cand.quality,
                                    "sqnr_db": round(cand.sqnr_db, 2), "backend": r.backend},
                             **(exporter.artifact_meta(dest) if hasattr(exporter, "artifact_meta") else {}))
            if hasattr(exporter, "report_section"):
                ctx.add_section(*exporter.report_section(dest))
        policy = r.chosen.policy.save(ctx.artifacts_dir / f"quant_policy_{r.fmt}.json")
        ctx.add_file(policy, "quant policy", format=r.fmt)
