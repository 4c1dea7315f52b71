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


def export_file(fmt: str, native: Any, path: Path) -> Path:
    """Writes `fmt` from a native model (importers.native.NativeModel); the format must be in
    file_formats(native.format)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgekit-native-") as d:
        src = native.write(Path(d) / f"model.{native.format}")
        return get(fmt).from_file(src, Path(path))
