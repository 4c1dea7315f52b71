"""Stages: one module per stage, each with a frozen `Settings` dataclass and `run(model, settings, ctx) -> model`.

A stage module declares its contract as data (edgekit.contract.Contract): what it needs (a torch model, labelled
data, artifacts, verified artifacts) and what it changes (weights, masks, structure, artifacts):
    CONTRACT = Contract(...)            or
    contract(settings) -> Contract      when it depends on a setting
The pipeline checks a recipe's order against the contracts before any stage runs, checkpoints the model after a
stage that changes it, and supersedes artifacts made before such a stage. A module may also define:
    restore(model, settings, ctx) -> model
                            rebuilds the structure the stage produced (e.g. decomposed layers), so that a resumed
                            run can load the checkpointed state dict into it
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
from typing import Any

from edgekit.errors import SettingsError, unknown


def available() -> list[str]:
    import edgekit.stages as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def get(name: str) -> types.ModuleType:
    """The stage module called `name`."""
    if name not in available():
        raise unknown("stage", name, available(), "Check the recipe's stage names")
    return importlib.import_module(f"edgekit.stages.{name}")


def settings_from_dict(cls: type, values: dict[str, Any] | None, where: str = "") -> Any:
    """Builds a settings dataclass from a recipe mapping; unknown keys are errors that list the allowed ones."""
    values = dict(values or {})
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(values) - set(allowed)
    if extra:
        raise SettingsError(f"{where or cls.__name__}: unknown settings {sorted(extra)}; allowed: {sorted(allowed)}")
    for k, v in list(values.items()):
        if isinstance(v, list):
            values[k] = tuple(v)
    try:
        return cls(**values)
    except TypeError as e:
        raise SettingsError(f"{where or cls.__name__}: {e}") from None


def settings_help(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) for each field, for `--help` texts and docs."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")  # type: ignore[misc]
        out.append((f.name, repr(default), f.metadata.get("help", "")))
    return out
