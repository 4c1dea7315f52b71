"""measure: latency of every verified artifact on the target's device.

Where the latency comes from is decided by edgekit.devices.latency_source (this machine for the host target, Node
and Chromium for the browser target, the --device URI otherwise, else "none": a host figure is never reported as a
device figure). The devices time; stages/_latency_record.py writes what they return into the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.contract import Contract
from edgekit.errors import RuntimeUnavailable, SettingsError
from edgekit.report import Latency

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CONTRACT = Contract(needs=frozenset({"verified"}))


@dataclass(frozen=True)
class Settings:
    runs: int = field(default=50, metadata={"help": "timed runs per artifact (p50/p90 over these)"})
    warmup: int = field(default=5, metadata={"help": "untimed runs first"})

    def __post_init__(self) -> None:
        if self.runs < 20:
            raise SettingsError(f"measure: runs must be at least 20, got {self.runs}")
        if self.warmup < 1:
            raise SettingsError(f"measure: warmup must be at least 1, got {self.warmup}")


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    from edgekit.devices import latency_source
    from edgekit.stages._latency_record import add_op_profile_section, record_latencies

    # The model as loaded (baseline/) is timed with the final artifacts, side by side: before and after alike. It
    # comes first: a device that times in groups (memory) times the first job in every group.
    arts = sorted((a for a in ctx.all_artifacts() if a.passed), key=lambda a: a.role != "baseline")
    src = latency_source(ctx.target, ctx.device)
    written: list[str] = []
    if src.source != "measured":
        for a in arts:
            a.latency = Latency.none(src.reason, device=ctx.target.description)
    else:
        if src.local:  # files only another machine runs (e.g. an aarch64 TVM library) are not timed here
            arts = [a for a in arts if a.meta.get("host_runnable") is not False]
        per_device = [_time_on(uri, arts, settings, ctx, src.explicit, src.local) for uri in src.devices]
        written = record_latencies([(a, [lats[i] for lats in per_device]) for i, a in enumerate(arts)], src, ctx)
        if src.local:  # per-operator times where the runtime offers them (ExecuTorch), apart from the timing runs
            from edgekit.latency.op_profile import profile_artifacts

            profile_artifacts(arts, ctx.out, ctx.example_input, ctx.threads)
    add_op_profile_section(arts, ctx)
    measured = [a for a in arts if a.latency.source == "measured"]
    ctx.record(details={"measured": len(measured), "artifacts": len(arts),
                        "device": ctx.report.get("device") or ("local" if src.local else None),
                        "devices": sorted({a.latency.via or "local" for a in measured}), "profiles": written})
    return model


def _time_on(uri: str, arts: list, settings: Settings, ctx: RunContext, explicit: bool,
             local: bool) -> list[Latency]:
    """One device's latencies for the artifacts. A device the user did not name (Chromium for the browser target)
    that is not installed gives "none" with the reason; a named one fails the stage."""
    from edgekit.devices import Job, open_device
    from edgekit.latency.op_profile import runtime_profiler

    jobs = [Job.from_artifact(a, ctx.out, ctx.example_input) for a in arts]
    try:
        with open_device(uri, target=ctx.target) as dev:
            # a remote harness profiles operators where the runtime can (the local device is profiled apart)
            profile_runs = 10 if not local and any(runtime_profiler(a.runtime) for a in arts) else 0
            return dev.time(jobs, settings.runs, warmup=settings.warmup, threads=ctx.threads,
                            progress=ctx.progress, profile_runs=profile_runs)
    except RuntimeUnavailable as e:
        if explicit:
            raise
        return [Latency.none(str(e), engine=uri, runtime=a.runtime) for a in arts]
