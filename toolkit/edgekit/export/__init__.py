"""Exporters: one module per format, each with `export(model, example, path) -> Path` and `RUNTIME`, the runtime
module that runs its artifacts."""

from __future__ import annotations

import importlib
import pkgutil
import types

from edgekit.errors import unknown


def formats() -> list[str]:
    import edgekit.export as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in ("verify",)
                  and not m.name.startswith("_"))


def get(fmt: str) -> types.ModuleType:
    if fmt not in formats():
        raise unknown("export format", fmt, formats())
    return importlib.import_module(f"edgekit.export.{fmt}")
