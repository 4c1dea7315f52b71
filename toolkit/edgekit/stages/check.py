"""check: "will it be faster?" before any training. Which layers the target's runtimes will run sparse and/or in
INT8, and what blocks the rest (the rules live in edgekit.rules). `compress` runs it first unless the recipe
already has it or sets `enabled: false`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.contract import Contract

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CONTRACT = Contract()
_MAX_BLOCKERS = 8


@dataclass(frozen=True)
class Settings:
    enabled: bool = field(default=True, metadata={"help": "run the check (it costs one TFLite conversion)"})


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    from edgekit import rules

    if not settings.enabled:
        ctx.record(details={"skipped": "disabled by the recipe"})
        return model
    if any(rt.sparse_rules != "none" for rt in ctx.target.runtimes):
        verdicts = [v.as_dict() for v in rules.check_model(model, ctx.target, tuple(ctx.bundle.input_shape))]
    else:
        # No rule set needs the graph: every runtime of the target is dense for a stated reason.
        verdicts = []
        for rt in ctx.target.runtimes:
            why = rules.get(rt.sparse_rules).reason(rt.name)
            verdicts.append({"runtime": rt.name, "format": rt.format, "sparse": False, "summary":
                             f"{rt.name}: dense ({why})", "blockers": [{"layer": "runtime", "why": why}]})
    findings = [{"runtime": v["runtime"], "format": v["format"], "sparse": v["sparse"], "summary": v["summary"],
                 "blockers": v["blockers"][:_MAX_BLOCKERS]} for v in verdicts]
    lines = ["Checked before any training (`edgekit check MODEL --target T` prints every layer).", ""]
    for f in findings:
        lines.append(f"- **{f['runtime']}** ({f['format']}): {f['summary']}")
        lines += [f"  - `{b['layer']}`: {b['why']}" for b in f["blockers"]]
    ctx.add_section("Will it be faster? (edgekit check)", "\n".join(lines))
    ctx.record(metrics={"sparse_runtimes": sum(f["sparse"] for f in findings)}, details={"findings": findings})
    return model
