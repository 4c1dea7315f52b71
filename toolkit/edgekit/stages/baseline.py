"""baseline: evaluate the uncompressed model (accuracy on labelled data, else agreement with itself = 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.train import predict, quality

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CHANGES_MODEL = False


@dataclass(frozen=True)
class Settings:
    max_inputs: int = field(default=2048, metadata={"help": "evaluate on at most this many test inputs"})


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    x = ctx.data.x_test[: settings.max_inputs]
    y = None if ctx.data.y_test is None else ctx.data.y_test[: settings.max_inputs]
    logits = predict(model, x)
    metrics = quality(logits, y, None)
    note = ("task accuracy on the labelled test split" if y is not None else
            "no labelled data: quality is top-1 agreement with this uncompressed model (1.0 by definition)")
    ctx.record(metrics=metrics, details={"inputs": len(x), "quality_metric": ctx.data.quality_metric, "note": note})
    return model
