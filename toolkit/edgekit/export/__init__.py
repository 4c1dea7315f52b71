"""Exporters: one module per format, each with `export(model, example, path) -> Path` and `RUNTIME`, the runtime
module that runs its artifacts. A format that can be made from a model file without torch (the native routes of
edgekit.importers.native) also has `FROM_FILE` (the model-file formats it takes) and `from_file(src, path) -> Path`."""

from __future__ import annotations

import importlib
import pkgutil
import types
from pathlib import Path
from typing import Any

from edgekit.errors import unknown


def formats() -> list[str]:
    import edgekit.export as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in ("verify",)
                  and not m.name.startswith("_"))


def get(fmt: str) -> types.ModuleType:
    if fmt not in formats():
        raise unknown("export format", fmt, formats())
    return importlib.import_module(f"edgekit.export.{fmt}")


def file_formats(model_format: str) -> list[str]:
    """Formats that can be written from a model file of `model_format` without a torch model."""
    return [f for f in formats() if model_format in getattr(get(f), "FROM_FILE", ())]


def export_kwargs(module: types.ModuleType, target: Any, held_out: Any, signature: Any) -> dict[str, Any]:
    """What a format's export() is given beyond the model: the target (formats that compile for a CPU), held-out
    inputs (formats that check themselves per layer), the model's signature (formats that keep it)."""
    kwargs: dict[str, Any] = {}
    if getattr(module, "TARGET_AWARE", False):
        kwargs["target"] = target
    if getattr(module, "WANTS_INPUTS", False) and held_out is not None:
        kwargs["probe_inputs"] = held_out[: module.PROBE_INPUTS].astype("float32")
    if getattr(module, "KEEPS_SIGNATURE", False) and signature is not None:
        kwargs["signature"] = signature
    return kwargs


def original_file(bundle: Any, fmt: str, model_version: int, model: Any = None, reference: Any = None
                  ) -> Path | None:
    """The model's own file when it is an artifact of `fmt` as it is: a model file of that format (with a torch
    form) that no stage has changed (model_version -1, or a `model` whose weights are the `reference`'s: a search
    that kept the model as it was). None otherwise."""
    if bundle.source_format != fmt or not hasattr(get(fmt), "from_file"):
        return None
    if model_version >= 0 and not _same_weights(model, reference):
        return None
    return Path((bundle.import_info or {}).get("file") or bundle.name)


def _same_weights(model: Any, reference: Any) -> bool:
    import torch

    if not isinstance(model, torch.nn.Module) or not isinstance(reference, torch.nn.Module):
        return False
    a, b = model.state_dict(), reference.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def export_file(fmt: str, native: Any, path: Path) -> Path:
    """Writes `fmt` from a native model (importers.native.NativeModel); the format must be in
    file_formats(native.format)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgekit-native-") as d:
        src = native.write(Path(d) / f"model.{native.format}")
        return get(fmt).from_file(src, Path(path))
