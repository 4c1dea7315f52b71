"""check: "will it be faster?" before any training. Which layers the target's runtimes will run sparse and/or in
INT8, and what blocks the rest (the rules live in edgekit.rules); only the runtimes of the formats the run makes
when its recipe names them. `compress` runs it first unless the recipe
already has it or sets `enabled: false`. On a native route (edgekit.importers.native) a .tflite model is judged
from the file itself, and a runtime whose format cannot be made from the model file says so."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit import export as exporters
from edgekit.contract import Contract

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CONTRACT = Contract()
_MAX_BLOCKERS = 8


@dataclass(frozen=True)
class Settings:
    enabled: bool = field(default=True, metadata={"help": "run the check (it costs one TFLite conversion, and one "
                                                         "XNNPACK lowering when the target lists ExecuTorch)"})


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    if not settings.enabled:
        ctx.record(details={"skipped": "disabled by the recipe"})
        return model
    verdicts = _verdicts(model, ctx) if ctx.native is None else _native_verdicts(ctx.native, ctx)
    findings = [{"runtime": v["runtime"], "format": v["format"], "sparse": v["sparse"], "summary": v["summary"],
                 "blockers": v["blockers"][:_MAX_BLOCKERS]} for v in verdicts]
    lines = ["Checked before any training (`edgekit check MODEL --target T` prints every layer).", ""]
    for f in findings:
        lines.append(f"- **{f['runtime']}** ({f['format']}): {f['summary']}")
        lines += [f"  - `{b['layer']}`: {b['why']}" for b in f["blockers"]]
    ctx.add_section("Will it be faster? (edgekit check)", "\n".join(lines))
    ctx.record(metrics={"sparse_runtimes": sum(f["sparse"] for f in findings)}, details={"findings": findings})
    return model


def _made_formats(ctx: RunContext) -> set[str] | None:
    """The formats the recipe's artifact-writing stages name (`--set export.formats=[onnx]`; the joint search's
    runtimes), or None when one of them writes the target's formats (then every runtime of the target is judged)."""
    if ctx.recipe is None:
        return None
    fmt_of = {rt.name: rt.format for rt in ctx.target.runtimes}
    named: set[str] = set()
    for spec in ctx.recipe.stages:
        if spec.contract.writes_artifacts:
            formats = getattr(spec.settings, "formats", None) or [fmt_of.get(r, r) for r in
                                                                   getattr(spec.settings, "runtimes", None) or ()]
            if not formats:
                return None
            named |= set(formats)
    return named or None


def _verdicts(model: nn.Module, ctx: RunContext) -> list[dict[str, Any]]:
    import dataclasses

    from edgekit import rules
    from edgekit.errors import EdgekitError, first_line

    made = _made_formats(ctx)
    runtimes = tuple(rt for rt in ctx.target.runtimes if made is None or rt.format in made) or ctx.target.runtimes
    target = dataclasses.replace(ctx.target, runtimes=runtimes)
    if any(rt.sparse_rules != "none" for rt in runtimes):
        try:
            return [v.as_dict() for v in rules.check_model(model, target, tuple(ctx.bundle.input_shape))]
        except EdgekitError as e:  # check never needs a format to export: the runtimes are judged dense
            why = f"could not inspect the graph ({first_line(e, 200)}): judged dense"
            return [_dense(rt, why, "graph") for rt in runtimes]
    # No rule set needs the graph: every runtime judged is dense for a stated reason.
    return [_dense(rt) for rt in runtimes]


def _dense(rt: Any, why: str | None = None, layer: str = "runtime") -> dict[str, Any]:
    """A runtime judged dense: for its rule set's reason, or for `why` (then said as it is)."""
    from edgekit import rules

    summary = f"{rt.name}: {why}" if why else None
    why = why or rules.get(rt.sparse_rules).reason(rt.name)
    return {"runtime": rt.name, "format": rt.format, "sparse": False, "summary": summary or f"{rt.name}: dense ({why})",
            "blockers": [{"layer": layer, "why": why}]}


def _native_verdicts(native: Any, ctx: RunContext) -> list[dict[str, Any]]:
    """Without a torch model: a .tflite model's graph is judged from the file itself; a runtime whose format the
    model file cannot give says so."""
    import tempfile
    from pathlib import Path

    from edgekit import rules

    makeable = exporters.file_formats(native.format)
    graph = {}
    if native.format == "tflite" and any(rt.sparse_rules != "none" for rt in ctx.target.runtimes):
        with tempfile.TemporaryDirectory(prefix="edgekit-check-") as d:
            verdicts = rules.check_graph(rules.read_tflite(native.write(Path(d) / "model.tflite")), ctx.target)
        graph = {v.runtime: v.as_dict() for v in verdicts}
    out = []
    for rt in ctx.target.runtimes:
        if rt.format not in makeable:
            why = f"no {rt.format} artifact: it needs a torch model ({native.blocker})"
            out.append({"runtime": rt.name, "format": rt.format, "sparse": False, "summary": f"{rt.name}: {why}",
                        "blockers": [{"layer": "model", "why": why}]})
        else:
            out.append(graph.get(rt.name) or _dense(rt))
    return out
