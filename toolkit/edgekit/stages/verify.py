"""verify: run every artifact in its own runtime, compare every output with the model it was made from (the model as
it is now for final artifacts, the model as loaded for baseline ones), at the calibration shape and, for an artifact
that kept the model's dynamic dimensions, at another shape too; score its quality on the run's quality split, and
fail loudly. An artifact made from an older model is never compared: that is a bug, not a tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit import heap
from edgekit.contract import Contract
from edgekit.errors import InputError, VerificationError, first_line
from edgekit.export.verify import check_shape, compare, other_shape, run_artifact
from edgekit.report import Verification
from edgekit.train import predict_outputs

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
    fail: bool = field(default=True, metadata={
        "help": "stop the run when no final artifact passes verification (one that fails is a line in the report, "
                "never recommended; the others go on)"})
    other_shapes: bool = field(default=True, metadata={
        "help": "also run every artifact that kept the model's dynamic dimensions at another shape (a batch of 2, "
                "larger dynamic sizes) against the reference"})


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    x, _ = ctx.quality_split()
    scored = settings.inputs == 0 or settings.inputs >= len(x)
    x = x if scored else x[: settings.inputs]
    refs = {}
    failed = []
    arts = [a for a in ctx.all_artifacts() if not a.meta.get("verify_with")]  # e.g. a browser bundle: its producer
    names = ctx.signature.output_names if ctx.signature is not None else None
    task = ctx.progress.add_task("verify", total=len(arts)) if ctx.progress else None
    for art in arts:
        if task is not None:
            ctx.progress.update(task, description=f"verify {art.path}")
        version = art.model_version if art.role == "final" else -1
        if art.role == "final" and version != ctx.model_version:
            raise VerificationError(f"{art.path} was made before stage {ctx.model_version + 1} changed the model and "
                                    "was not superseded; this is an edgekit bug, please report it")
        ref_model = model if version == ctx.model_version else ctx.reference
        if version not in refs:
            refs[version] = ctx.model_outputs(ref_model, version) if scored else predict_outputs(ref_model, x)
        try:
            got, runtime = run_artifact(ctx.out / art.path, art.runtime, x, ctx.threads)
        except InputError as e:  # its runtime cannot load or run the file: a failed artifact, not a failed run
            art.verification = Verification(_reference_name(ctx, version), art.runtime, len(x), None, None, None,
                                            art.tolerance, False, error=first_line(e, 240))
        else:
            art.verification = compare(got, refs[version], runtime, art.tolerance, _reference_name(ctx, version),
                                       names)
            if settings.other_shapes:
                _check_other_shape(art, ctx, x, version, ref_model, names)
            if scored:
                art.verification.quality = {"metric": ctx.metric.name, "value": ctx.quality_of(got),
                                            "inputs": len(got[0])}
        if not art.verification.passed:
            failed.append(art)
        heap.trim(collect=False)  # its runtime is released: one artifact's buffers at a time
        if task is not None:
            ctx.progress.advance(task)
    if task is not None:
        ctx.progress.remove_task(task)
    ctx.record(metrics={"artifacts_verified": len(arts) - len(failed), "artifacts_failed": len(failed)})
    for art in failed:
        ctx.skip(art.format, f"{art.path} failed verification: {_why(art)}")
    finals = [a for a in arts if a.role == "final"]
    if settings.fail and finals and all(a in failed for a in finals):
        ctx.save()
        _raise(next(a for a in failed if a.role == "final"), ctx)
    return model


def _check_other_shape(art: Artifact, ctx: RunContext, x: Any, version: int, ref_model: Any,
                       names: list[str] | None) -> None:
    """An artifact that kept the model's dynamic dimensions runs at another shape too, compared with the model as
    loaded (its own file where it came as one: what the application ran) or the torch model it was made from."""
    sig = ctx.signature
    if sig is None or not sig.dynamic or not (art.signature or {}).get("kept") or len(sig.inputs) != 1:
        return
    x2 = other_shape(x, sig.inputs[0].dynamic_axes)
    if x2 is None:
        return
    original = ctx.bundle.native if version < 0 else None
    reference = original.outputs if original is not None else (lambda a: predict_outputs(ref_model, a))
    row = check_shape(ctx.out / art.path, art.runtime, x2, reference, art.tolerance, ctx.threads, names)
    art.verification.shapes = [row]
    if row["passed"] is False:
        art.verification.passed = False


def _reference_name(ctx: RunContext, version: int) -> str:
    if ctx.native is not None:  # the native routes: the original file in its own runtime is the model as loaded
        return ctx.native.reference_name
    if version < 0:
        return "torch: the model as loaded"
    return f"torch: the model after {ctx.recipe.stages[version].name} (stage {version + 1})"


def _why(art: Artifact) -> str:
    """What failed, in one line: an output's error, a shape, or the first output's error and top-1 agreement."""
    v = art.verification
    if v.error:
        return f"its runtime could not run it: {v.error}"
    bad = next((r for r in (v.outputs or []) if not r["passed"]), None)
    shape = next((r for r in (v.shapes or []) if r.get("passed") is False), None)
    limit = v.tolerance.get("max_abs_err_limit")
    if bad is not None:
        err = bad.get("why") or f"max abs err {bad['max_abs_err']:.3g} (limit {bad['limit']:.3g})"
        what = f"output {bad['name']}: {err}"
    elif shape is not None and (limit is None or v.max_abs_err <= limit):
        what = f"at shape {shape['shape']}: {shape.get('why')}"
    else:
        what = f"max abs err {v.max_abs_err:.3g} (limit {limit})"
    top1 = "" if v.top1_agreement is None else f", top-1 agreement {v.top1_agreement:.3f}"
    return f"{what}{top1}"


def _raise(art: Artifact, ctx: RunContext) -> None:
    raise VerificationError(f"no artifact passed verification: {art.path} disagrees with its reference "
                            f"({art.verification.reference}): {_why(art)}; see {ctx.out / 'report.json'}")
