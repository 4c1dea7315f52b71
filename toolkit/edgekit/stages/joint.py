"""joint: search per-layer width (channel pruning), precision (FP32 / INT8) and, where the target runs sparse weights,
sparsity together, on quality, latency in the artifact's own runtime and size (edgekit.joint; docs/joint.md).

Returns the chosen architecture, pruned and fine-tuned (a thinner dense torch model, so later stages export it),
and registers the chosen artifact (`artifacts/model_joint.<fmt>`, in the runtime the search chose, with its INT8
layers) for verify and measure. joint/channels.json keeps the pruning history that rebuilds the architecture.
"""

from __future__ import annotations

import math
import shutil
from typing import TYPE_CHECKING

from edgekit.contract import Contract
from edgekit.joint.settings import Settings

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

__all__ = ["Settings", "run", "restore", "CONTRACT"]
FORMATS = {"onnxruntime": "onnx", "litert": "tflite"}
CONTRACT = Contract(needs=frozenset({"torch"}), changes=frozenset({"weights", "structure", "artifacts"}),
                    keeps_masks=False, masks_note="channel pruning changes the shapes the masks were made for",
                    outputs=("joint", "joint_pareto.png"))


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    from edgekit.fileio import write_json
    from edgekit.joint import report
    from edgekit.joint.search import search_joint

    work = ctx.out / "joint"
    result = search_joint(model, ctx.data, ctx.target, settings, work / "candidates", threads=ctx.threads,
                          device=ctx.device, progress=ctx.progress, metric=ctx.metric)
    ch = result.chosen
    ctx.masks = None  # the layers changed shape: no earlier pruning mask fits them
    write_json(work / "channels.json", {"version": 1, "history": result.history, "decision": ch.decision.as_dict()})
    dest = ctx.artifacts_dir / f"model_joint{ch.path.suffix}"
    shutil.copyfile(ch.path, dest)
    precision = ("int8" if len(ch.decision.int8) == len(result.space.layers) else "mixed") if ch.decision.int8 \
        else "fp32"
    # INT8 logits differ from float by design: check top-1 agreement, allowing for the spread of a 32-input
    # verification sample around the agreement the search measured (as the quantize stage does).
    a = ch.agreement
    tolerance = {"max_abs_err": None, "min_top1": round(max(0.0, a - 3 * math.sqrt(max(a * (1 - a), 0.01) / 32)
                                                            - 0.02), 3)} if ch.decision.int8 else None
    ctx.add_artifact(dest, FORMATS[ch.decision.runtime], ch.decision.runtime, precision=precision,
                     sparse=bool(ch.decision.sparsity), **({"tolerance": tolerance} if tolerance else {}),
                     joint={"drop": round(ch.drop, 4), "quality": ch.quality, "label": ch.label})
    plot = report.plot_front(ctx.out / "joint_pareto.png", result, f"{ctx.report.get('model')} → {ctx.target.name}",
                             settings.max_quality_drop)
    ctx.add_section("Joint pruning + quantisation search",
                    report.markdown(result, plot.name if plot else None, ctx.metric.name))
    ctx.record(metrics={"quality_metric": ctx.metric.name, "quality_before": result.dense[
                        ch.decision.runtime].quality, "quality_after": ch.quality, "quality_drop": round(ch.drop, 4),
                        "constraints_met": result.constraints_met, "speedup": result.speedup()},
               details={**result.as_dict(), "channels": "joint/channels.json",
                        "plot": plot.name if plot else None})
    shutil.rmtree(work / "candidates", ignore_errors=True)  # the chosen artifact was copied out
    return result.model


def restore(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    """Rebuilds the chosen architecture of a finished search, so that its checkpoint loads into it."""
    import json

    import torch

    from edgekit.errors import InputError
    from edgekit.prune.channels import replay

    path = ctx.out / "joint" / "channels.json"
    try:
        history = json.loads(path.read_text())["history"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot read the joint search's pruning record ({e}); rerun with --fresh") from None
    return replay(model, torch.as_tensor(ctx.example_input), history)
