"""verify: run every artifact in its own runtime and compare it with the torch reference; fail loudly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.errors import VerificationError
from edgekit.export.verify import verify_artifact
from edgekit.train import predict

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CHANGES_MODEL = False


@dataclass(frozen=True)
class Settings:
    inputs: int = field(default=32, metadata={"help": "held-out inputs each artifact is compared on"})
    fail: bool = field(default=True, metadata={"help": "stop the run when an artifact fails verification"})


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    x = ctx.data.x_test[: settings.inputs]
    reference = predict(model, x)
    failed = []
    arts = ctx.report["artifacts"]
    task = ctx.progress.add_task("verify", total=len(arts)) if ctx.progress else None
    for art in arts:
        if task is not None:
            ctx.progress.update(task, description=f"verify {art['path']}")
        if art.get("verify_with"):
            # Artifacts that only another tool can run (e.g. a browser bundle) were verified by their producer.
            if task is not None:
                ctx.progress.advance(task)
            continue
        ref = reference if art.get("reference", "torch") == "torch" else ctx.reference_logits()[: len(x)]
        art["verification"] = verify_artifact(ctx.out / art["path"], art["runtime"], ref, x, ctx.threads,
                                              art.get("tolerance"))
        if not art["verification"]["passed"]:
            failed.append(art["path"])
        if task is not None:
            ctx.progress.advance(task)
    if task is not None:
        ctx.progress.remove_task(task)
    ctx.record(metrics={"artifacts_verified": len(arts) - len(failed), "artifacts_failed": len(failed)})
    if failed and settings.fail:
        ctx.save()
        v = next(a["verification"] for a in arts if a["path"] == failed[0])
        raise VerificationError(f"{failed[0]} disagrees with the reference: max abs err {v['max_abs_err']:.3g} "
                                f"(limit {v['tolerance']['max_abs_err_limit']}), top-1 agreement {v['top1_agreement']:.3f}; "
                                f"see {ctx.out / 'report.json'}")
    return model
