"""verify: run every artifact in its own runtime, compare it with the torch model it was made from (the model as
it is now for final artifacts, the model as loaded for baseline ones), score its quality on the run's quality split,
and fail loudly. An artifact made from an older model is never compared: that is a bug, not a tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.contract import Contract
from edgekit.errors import VerificationError
from edgekit.export.verify import compare, run_artifact
from edgekit.train import predict

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext
    from edgekit.report import Artifact

CONTRACT = Contract(needs=frozenset({"artifacts"}), verifies=True)


@dataclass(frozen=True)
class Settings:
    inputs: int = field(default=0, metadata={"help": "held-out inputs each artifact is compared and scored on (0: "
                                                     "the run's quality split, up to 2048 test inputs; a smaller "
                                                     "number leaves the artifact's quality unscored)"})
    fail: bool = field(default=True, metadata={"help": "stop the run when an artifact fails verification"})


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    x, _ = ctx.quality_split()
    scored = settings.inputs == 0 or settings.inputs >= len(x)
    x = x if scored else x[: settings.inputs]
    refs = {}
    failed = []
    arts = [a for a in ctx.all_artifacts() if not a.meta.get("verify_with")]  # e.g. a browser bundle: its producer
    task = ctx.progress.add_task("verify", total=len(arts)) if ctx.progress else None
    for art in arts:
        if task is not None:
            ctx.progress.update(task, description=f"verify {art.path}")
        version = art.model_version if art.role == "final" else -1
        if art.role == "final" and version != ctx.model_version:
            raise VerificationError(f"{art.path} was made before stage {ctx.model_version + 1} changed the model and "
                                    "was not superseded; this is an edgekit bug, please report it")
        if version not in refs:
            ref_model = model if version == ctx.model_version else ctx.reference
            refs[version] = ctx.model_logits(ref_model, version)[: len(x)] if scored else predict(ref_model, x)
        got, runtime = run_artifact(ctx.out / art.path, art.runtime, x, ctx.threads)
        art.verification = compare(got, refs[version], runtime, art.tolerance, reference=_reference_name(ctx, version))
        if scored:
            art.verification.quality = {"metric": ctx.data.quality_metric, "value": ctx.quality_of_logits(got),
                                        "inputs": len(got)}
        if not art.verification.passed:
            failed.append(art)
        if task is not None:
            ctx.progress.advance(task)
    if task is not None:
        ctx.progress.remove_task(task)
    ctx.record(metrics={"artifacts_verified": len(arts) - len(failed), "artifacts_failed": len(failed)})
    if failed and settings.fail:
        ctx.save()
        _raise(failed[0], ctx)
    return model


def _reference_name(ctx: RunContext, version: int) -> str:
    if version < 0:
        return "torch: the model as loaded"
    return f"torch: the model after {ctx.recipe.stages[version].name} (stage {version + 1})"


def _raise(art: Artifact, ctx: RunContext) -> None:
    v = art.verification
    raise VerificationError(f"{art.path} disagrees with its reference ({v.reference}): max abs err {v.max_abs_err:.3g} "
                            f"(limit {v.tolerance['max_abs_err_limit']}), top-1 agreement {v.top1_agreement:.3f}; "
                            f"see {ctx.out / 'report.json'}")
