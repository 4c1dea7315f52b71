"""baseline: evaluate the model (accuracy on labelled data, else agreement with the model as loaded), and, when a
later stage of the recipe changes the model, export the model as loaded to baseline/ so that verify checks and
measure times "before" beside "after"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.contract import Contract
from edgekit.train import predict, quality

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
    x = ctx.data.x_test[: settings.max_inputs]
    y = None if ctx.data.y_test is None else ctx.data.y_test[: settings.max_inputs]
    ref = None if y is not None or ctx.model_version < 0 else ctx.reference_logits()[: len(x)]
    qx, _ = ctx.quality_split()
    # The quality split's logits of this model version are usually computed already (the chain's first point).
    logits = ctx.model_logits(model)[: len(x)] if len(x) <= len(qx) else predict(model, x)
    metrics = quality(logits, y, ref)
    note = ("task accuracy on the labelled test split" if y is not None else
            "no labelled data: quality is top-1 agreement with the model as loaded (1.0 for the loaded model)")
    written = _baseline_artifacts(ctx) if settings.artifacts else []
    ctx.record(metrics=metrics, details={"inputs": len(x), "quality_metric": ctx.data.quality_metric, "note": note,
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
        kwargs = {"target": ctx.target} if getattr(module, "TARGET_AWARE", False) else {}
        module.export(ctx.reference, ctx.example_input, path, **kwargs)
        companions = [module.sidecar(path).relative_to(ctx.out).as_posix()] if hasattr(module, "sidecar") else None
        ctx.add_artifact(path, fmt, module.RUNTIME, role="baseline", companions=companions)
        written.append(path.relative_to(ctx.out).as_posix())
    return written
