"""export: write the model in every format the target's runtimes use (ONNX, TFLite, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit import export as exporters
from edgekit.contract import Contract
from edgekit.errors import SettingsError

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CONTRACT = Contract(needs=frozenset({"torch"}), changes=frozenset({"artifacts"}))


@dataclass(frozen=True)
class Settings:
    formats: tuple[str, ...] = field(default=(), metadata={"help": "formats to write; empty: the target's formats"})
    name: str = field(default="model_fp32", metadata={"help": "artifact file name without suffix"})

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in exporters.formats()]
        if bad:
            raise SettingsError(f"export: unknown formats {bad}; available: {exporters.formats()}")


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    fmts = settings.formats or ctx.target.formats
    task = ctx.progress.add_task("export", total=len(fmts)) if ctx.progress else None
    written = []
    for fmt in fmts:
        if task is not None:
            ctx.progress.update(task, description=f"export {fmt}")
        module = exporters.get(fmt)
        path = ctx.artifacts_dir / f"{settings.name}{module.SUFFIX}"
        # formats that compile for a CPU (tvm) are told the target; portable formats are not
        kwargs = {"target": ctx.target} if getattr(module, "TARGET_AWARE", False) else {}
        module.export(model, ctx.example_input, path, **kwargs)
        # files an exporter writes beside the artifact (e.g. the TVM library's JSON) belong to it
        companions = [module.sidecar(path).relative_to(ctx.out).as_posix()] if hasattr(module, "sidecar") else None
        ctx.add_artifact(path, fmt, module.RUNTIME, precision="fp32", sparse=False, companions=companions)
        written.append(path.name)
        if task is not None:
            ctx.progress.advance(task)
    if task is not None:
        ctx.progress.remove_task(task)
    ctx.record(details={"formats": list(fmts), "files": written})
    return model
