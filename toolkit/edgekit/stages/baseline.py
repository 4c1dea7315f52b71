"""baseline: evaluate the model with the run's metric (edgekit.quality: against labels, else against the model as
loaded), and, when a later stage of the recipe changes the model, export the model as loaded to baseline/ so that
verify checks and measure times "before" beside "after"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.contract import Contract
from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

# Its files in baseline/ describe the model as loaded: never stale, never deployed, so not "artifacts" here.
CONTRACT = Contract(outputs=("baseline",))


@dataclass(frozen=True)
class Settings:
    max_inputs: int = field(default=2048, metadata={"help": "evaluate on at most this many test inputs"})
    artifacts: bool = field(default=True, metadata={
        "help": "export the model as loaded to baseline/ when a later stage changes the model (before/after "
                "latencies measured side by side)"})


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    # The quality split's outputs of this model version are usually computed already (the chain's first point).
    outputs = [o[: settings.max_inputs] for o in ctx.model_outputs(model)]
    metric = ctx.metric
    metrics = {metric.name: ctx.quality_of(outputs)}
    if metric.task == "detect" and getattr(metric, "last", None):
        metrics.update(metric.last)
    note = (f"{metric.name} ({metric.task}) on the labelled test split" if metric.labelled else
            f"no labels: {metric.name} ({metric.task}) against the model as loaded (its own score is the best "
            f"possible)")
    written = _baseline_artifacts(ctx) if settings.artifacts else []
    ctx.record(metrics=metrics, details={"inputs": len(outputs[0]), "quality_metric": metric.name, "note": note,
                                         "baseline_artifacts": written})
    return model


def _baseline_artifacts(ctx: RunContext) -> list[str]:
    """Float exports of the model as loaded, in the formats the recipe's export stage writes."""
    from edgekit import export as exporters

    later = ctx.recipe.stages[ctx._stage_index + 1:] if ctx.recipe else ()
    if not any(s.contract.changes_model for s in later):
        return []  # the final float artifacts are the loaded model: they stand for "before"
    export = next((s for s in later if s.name == "export"), None)
    fmts = (getattr(export.settings, "formats", ()) if export else ()) or ctx.target.formats
    written = []
    for fmt in fmts:
        module = exporters.get(fmt)
        path = ctx.out / "baseline" / f"model_fp32{module.SUFFIX}"
        original = exporters.original_file(ctx.bundle, fmt, -1)
        try:
            if original is not None:
                module.from_file(original, path)
            else:
                kwargs = exporters.export_kwargs(module, ctx.target, None, ctx.signature)
                module.export(ctx.reference, ctx.example_input, path, **kwargs)
        except EdgekitError as e:  # the final artifacts of this format fail the same way, and say so there
            ctx.skip(fmt, f"baseline export: {e}")
            continue
        companions = [module.sidecar(path).relative_to(ctx.out).as_posix()] if hasattr(module, "sidecar") else None
        ctx.add_artifact(path, fmt, module.RUNTIME, role="baseline", companions=companions)
        written.append(path.relative_to(ctx.out).as_posix())
    return written
