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
import typing
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
    """Builds a settings dataclass from a recipe mapping or --set values: the one place settings are checked.

    Unknown keys are errors that list the allowed ones; each value must have its field's declared type (YAML lists
    become tuples, integers are accepted where a float is declared); the dataclass's own __post_init__ then checks
    ranges and choices. Every problem is one SettingsError.
    """
    where = where or cls.__name__
    values = dict(values or {})
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(values) - set(allowed)
    if extra:
        raise SettingsError(f"{where}: unknown settings {sorted(extra)}; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    for k, v in list(values.items()):
        if isinstance(v, list):
            v = tuple(v)
        ok, v = _coerce(v, hints[k])
        if not ok:
            raise SettingsError(f"{where}: {k} must be {_type_name(hints[k])}, got {values[k]!r}")
        values[k] = v
    try:
        return cls(**values)
    except TypeError as e:
        raise SettingsError(f"{where}: {e}") from None


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether `value` fits the annotation `tp`, the value to use)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            ok, v = _coerce(value, option)
            if ok:
                return True, v
        return False, value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False, value
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is None:
            return (len(args) == len(value) and all(_coerce(v, a)[0] for v, a in zip(value, args, strict=False)),
                    value)
        coerced = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in coerced), tuple(v for _, v in coerced)
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if tp is type(None):
        return value is None, value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is Any:
        return True, value
    return isinstance(value, tp) if isinstance(tp, type) else True, value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def settings_help(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) for each field, for `--help` texts and docs."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")  # type: ignore[misc]
        out.append((f.name, repr(default), f.metadata.get("help", "")))
    return out
