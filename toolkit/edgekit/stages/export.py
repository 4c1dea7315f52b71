"""export: write the model in every format the target's runtimes use (ONNX, TFLite, ...).

On a native route (edgekit.importers.native: an ONNX file onnx2torch cannot convert, a .tflite file) the formats
that can be made from the file are written from it (ONNX and the browser bundle from an ONNX file, TFLite from a
.tflite file), and the others are skipped with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit import child
from edgekit import export as exporters
from edgekit.contract import Contract
from edgekit.errors import EdgekitError, SettingsError
from edgekit.fileio import check_file_name

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext


def contract(settings: Settings) -> Contract:
    # Without a torch model, the formats asked for must all be writable from the model file (any, when none are
    # asked for: the target's formats that can be are written, the others skipped with the reason).
    sources = [set(getattr(exporters.get(f), "FROM_FILE", ())) for f in settings.formats]
    native = set.intersection(*sources) if sources else {m for f in exporters.formats()
                                                         for m in getattr(exporters.get(f), "FROM_FILE", ())}
    return Contract(needs=frozenset({"torch"}), changes=frozenset({"artifacts"}), native=frozenset(native))


@dataclass(frozen=True)
class Settings:
    formats: tuple[str, ...] = field(default=(), metadata={"help": "formats to write; empty: the target's formats"})
    name: str = field(default="model_fp32", metadata={"help": "artifact file name without suffix"})

    def __post_init__(self) -> None:
        check_file_name(self.name, "export: name")
        bad = [f for f in self.formats if f not in exporters.formats()]
        if bad:
            raise SettingsError(f"export: unknown formats {bad}; available: {exporters.formats()}")


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    fmts = list(settings.formats or ctx.target.formats)
    native = ctx.native
    skipped: dict[str, str] = {}
    if native is not None:
        makeable = exporters.file_formats(native.format)
        skipped = {f: f"needs a torch model ({native.blocker})" for f in fmts if f not in makeable}
        for f, why in skipped.items():
            ctx.skip(f, why)
        fmts = [f for f in fmts if f in makeable]
        if not fmts:
            raise SettingsError(f"export: none of the formats {sorted(skipped)} can be written from a .{native.format}"
                                f" model without a torch model ({native.blocker})")
    task = ctx.progress.add_task("export", total=len(fmts)) if ctx.progress else None
    written, failed = [], {}
    for fmt in fmts:
        if task is not None:
            ctx.progress.update(task, description=f"export {fmt}")
        module = exporters.get(fmt)
        path = ctx.artifacts_dir / f"{settings.name}{module.SUFFIX}"
        original = exporters.original_file(ctx.bundle, fmt, ctx.model_version, model, ctx.reference)
        try:
            if native is not None:
                exporters.export_file(fmt, native, path)
            elif original is not None:  # the model is unchanged: its own file is the artifact, exactly as it came
                module.from_file(original, path)
            else:  # big weights: in a child process, which takes the converter's memory with it (edgekit.child)
                isolated = child.for_model(model)
                isolated(f"{fmt} export", module.export, model, ctx.example_input, path,
                         **exporters.export_kwargs(module, ctx.target, ctx.data.x_test, ctx.signature))
        except EdgekitError as e:  # one format failing is a line in the report, not the end of the run
            failed[fmt] = str(e)
            ctx.skip(fmt, str(e))
            if task is not None:
                ctx.progress.advance(task)
            continue
        # files an exporter writes beside the artifact (e.g. the TVM library's JSON) belong to it
        companions = [module.sidecar(path).relative_to(ctx.out).as_posix()] if hasattr(module, "sidecar") else None
        meta = module.artifact_meta(path) if hasattr(module, "artifact_meta") else {}
        if native is not None or original is not None:
            meta["from_file"] = native.format if native is not None else f"{fmt} (the original file: the model is " \
                                                                          f"unchanged)"
        ctx.add_artifact(path, fmt, module.RUNTIME, precision="fp32", sparse=False, companions=companions, **meta)
        if hasattr(module, "report_section"):
            ctx.add_section(*module.report_section(path))
        written.append(path.name)
        if task is not None:
            ctx.progress.advance(task)
    if task is not None:
        ctx.progress.remove_task(task)
    skipped.update(failed)
    ctx.record(details={"formats": list(fmts), "files": written, **({"skipped": skipped} if skipped else {})})
    if skipped:
        ctx.add_section("Export", "Not written:\n\n" + "\n".join(f"- {f}: {why}" for f, why in skipped.items()))
    if not written:
        raise EdgekitError(f"export: no format could be written ({'; '.join(f'{f}: {w}' for f, w in failed.items())})")
    return model
