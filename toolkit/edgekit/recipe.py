"""Recipes: ordered stages with their settings, read from recipes/*.yaml, a YAML file or a mapping, with --set
overrides, and checked against the stage contracts (edgekit.contract) before anything runs. `auto` is planned by
edgekit.plan, not read from a file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgekit import stages as stage_registry
from edgekit.contract import Contract, check_order, contract_of
from edgekit.errors import SettingsError, first_line
from edgekit.targets import project_root


@dataclass(frozen=True)
class StageSpec:
    name: str
    settings: Any

    @property
    def contract(self) -> Contract:
        return contract_of(stage_registry.get(self.name), self.settings)


@dataclass(frozen=True)
class Recipe:
    stages: tuple[StageSpec, ...]
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source,
                "stages": [{s.name: dataclasses.asdict(s.settings)} for s in self.stages]}

    def names(self) -> list[str]:
        return [s.name for s in self.stages]


def recipes_dir() -> Path:
    return project_root() / "recipes"


def recipe_names() -> list[str]:
    return sorted([p.stem for p in recipes_dir().glob("*.yaml")] + ["auto"])


def _read_spec(spec: str | dict) -> tuple[dict, str]:
    if isinstance(spec, dict):
        return spec, "inline"
    path = Path(spec)
    if not path.suffix:
        path = recipes_dir() / f"{spec}.yaml"
    if not path.is_file():
        from edgekit.errors import unknown

        raise unknown("recipe", str(spec), recipe_names(), "Pass a recipe name or a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SettingsError(f"{path}: not valid YAML: {first_line(e)}") from None
    return raw, str(path)


def load_recipe(spec: str | dict, overrides: dict[str, dict[str, Any]] | None = None,
                first: tuple[str, ...] = ()) -> Recipe:
    """Reads a recipe and checks its order (one-line SettingsError for an order that cannot work).

    Args:
        spec: "basic", "recipes/x.yaml", or {"stages": [{"prune": {...}}, ...]}.
        overrides: {stage: {field: value}} applied on top (from --set); a stage the recipe lacks is an error.
        first: stages put first when the recipe lacks them (compress puts `check` first).
    """
    raw, source = _read_spec(spec)
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
        raise SettingsError(f"recipe {source}: expected a mapping with a 'stages' list")
    entries = []
    for i, entry in enumerate(raw["stages"]):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise SettingsError(f"recipe {source}: stage {i} must be a name or a one-key mapping")
        entries.append(next(iter(entry.items())))
    present = {name for name, _ in entries}
    entries = [(name, {}) for name in first if name not in present] + entries
    overrides = dict(overrides or {})
    missing = [name for name in overrides if name not in {n for n, _ in entries}]
    if missing:
        listed = ", ".join(n for n, _ in entries)
        raise SettingsError(f"--set {missing[0]}.…: the recipe ({source}) has no stage '{missing[0]}'; its stages: "
                            f"{listed}")
    specs = []
    for name, values in entries:
        module = stage_registry.get(name)
        merged = {**(values or {}), **overrides.get(name, {})}
        specs.append(StageSpec(name, stage_registry.settings_from_dict(module.Settings, merged, f"stage {name}")))
    recipe = Recipe(tuple(specs), source)
    check_order([(s.name, s.contract) for s in recipe.stages])
    return recipe
