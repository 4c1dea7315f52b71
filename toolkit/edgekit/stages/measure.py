"""measure: latency of every verified artifact where the target's device can be reached.

For the host target the device is this machine, so its timings are measured. For any other target, latency.source
is "none" unless a device runner reaches the device; a host figure is never reported as a device figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.contract import Contract
from edgekit.errors import SettingsError
from edgekit.report import Latency
from edgekit.runtimes import load_runner, time_interleaved
from edgekit.targets import host_facts

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


def host_device_name() -> str:
    f = host_facts()
    return f"host: {f['cpu']} ({f['cores']} cores, {f['arch']})"


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    # The model as loaded (baseline/) is timed with the final artifacts, side by side: before and after alike.
    arts = [a for a in ctx.all_artifacts() if a.passed]
    local = ctx.target.is_host and ctx.device in (None, "local")
    if ctx.target.device_kind == "browser" and ctx.device in (None, "node", "chromium"):
        # The browser target's device is a real JavaScript engine on this machine: Node and headless Chromium.
        from edgekit.measure.browser import measure_artifacts_in_browsers

        measure_artifacts_in_browsers(arts, settings, ctx)
    elif not local and ctx.device:
        from edgekit.measure.device import measure_artifacts_on_device  # ssh://, adb://

        measure_artifacts_on_device(arts, settings, ctx)
    elif not local:
        for a in arts:
            a.latency = Latency.none(f"no {ctx.target.name} device attached (pass --device URI to measure there); "
                                     f"host timings are not reported as {ctx.target.name} latencies",
                                     device=ctx.target.description)
    else:
        measurable = [a for a in arts if a.meta.get("host_runnable") is not False]
        runners = [load_runner(a.runtime, ctx.out / a.path, ctx.threads) for a in measurable]
        x = [ctx.example_input.reshape(r.input_shape) if r.input_shape else ctx.example_input for r in runners]
        timings = time_interleaved(runners, x, settings.warmup, settings.runs, ctx.progress)
        for a, r, t in zip(measurable, runners, timings, strict=True):
            a.latency = Latency.measured(t, device=host_device_name(), runtime=r.runtime, threads=ctx.threads,
                                         via="local")
    ctx.record(details={"measured": sum(a.latency.source == "measured" for a in arts),
                        "artifacts": len(arts), "device": ctx.device or ("local" if local else None)})
    return model
