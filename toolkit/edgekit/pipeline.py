"""Recipe -> ordered stages, one run folder, resumable.

Each stage's record carries a fingerprint of everything upstream (model, weights, data, target, threads and the
settings of every earlier stage). A second run with the same fingerprint reuses a finished stage: its model state is
reloaded from the run folder's state/ and its artifacts are kept, if their files still match their sha256.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgekit import stages as stage_registry
from edgekit.data import DataBundle
from edgekit.errors import EdgekitError, SettingsError
from edgekit.fileio import atomic_path, fingerprint, sha256_file
from edgekit.report import save_report
from edgekit.targets import Target, project_root
from edgekit.zoo import ModelBundle


@dataclass(frozen=True)
class StageSpec:
    name: str
    settings: Any


@dataclass(frozen=True)
class Recipe:
    stages: tuple[StageSpec, ...]
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source,
                "stages": [{s.name: dataclasses.asdict(s.settings)} for s in self.stages]}


def recipes_dir() -> Path:
    return project_root() / "recipes"


def load_recipe(spec: str | dict, overrides: dict[str, dict[str, Any]] | None = None) -> Recipe:
    """Reads a recipe: a name in recipes/, a YAML path, or an already-parsed mapping.

    Args:
        spec: "basic", "recipes/x.yaml", or {"stages": [{"prune": {...}}, ...]}.
        overrides: {stage: {field: value}} applied on top (from CLI flags).
    """
    if isinstance(spec, dict):
        raw, source = spec, "inline"
    else:
        path = Path(spec)
        if not path.suffix:
            path = recipes_dir() / f"{spec}.yaml"
        if not path.is_file():
            names = [p.stem for p in recipes_dir().glob("*.yaml")]
            from edgekit.errors import unknown

            raise unknown("recipe", str(spec), names, "Pass a recipe name or a YAML file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SettingsError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        source = str(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
        raise SettingsError(f"recipe {source}: expected a mapping with a 'stages' list")
    overrides = dict(overrides or {})
    specs = []
    for i, entry in enumerate(raw["stages"]):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise SettingsError(f"recipe {source}: stage {i} must be a name or a one-key mapping")
        (name, values), = entry.items()
        module = stage_registry.get(name)
        merged = {**(values or {}), **overrides.pop(name, {})}
        specs.append(StageSpec(name, stage_registry.settings_from_dict(module.Settings, merged, f"stage {name}")))
    if overrides:
        # A flag for a stage the recipe lacks adds that stage before export.
        for name, values in overrides.items():
            module = stage_registry.get(name)
            at = next((i for i, s in enumerate(specs) if s.name == "export"), len(specs))
            specs.insert(at, StageSpec(name, stage_registry.settings_from_dict(module.Settings, values, f"stage {name}")))
    return Recipe(tuple(specs), source)


@dataclass
class RunContext:
    """What every stage sees: the run folder, target, data and the report being written."""

    out: Path
    target: Target
    bundle: ModelBundle
    data: DataBundle
    threads: int
    report: dict[str, Any]
    progress: Any = None
    device: str | None = None  # device URI for measurement (None: this machine for the host target)
    reference: Any = None  # the uncompressed torch model, for agreement metrics
    console: Any = None
    resume: bool = True  # False (--fresh): stages also ignore their own checkpoints (e.g. lottery rounds)
    _record: dict[str, Any] = field(default_factory=dict)
    _stage_index: int = -1
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def artifacts_dir(self) -> Path:
        d = self.out / "artifacts"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def example_input(self) -> np.ndarray:
        return self.data.x_test[:1].astype(np.float32)

    def reference_logits(self, split: str = "test") -> np.ndarray:
        """Logits of the uncompressed model on the test (or train) split; computed once."""
        key = f"ref_logits_{split}"
        if key not in self._cache:
            from edgekit.train import predict

            x = self.data.x_test if split == "test" else self.data.x_train
            self._cache[key] = predict(self.reference, x)
        return self._cache[key]

    def record(self, *, metrics: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
               **fields: Any) -> None:
        """Adds to the current stage's one record (metrics and details merge; other fields replace)."""
        if metrics:
            self._record.setdefault("metrics", {}).update(metrics)
        if details:
            self._record.setdefault("details", {}).update(details)
        self._record.update(fields)

    def add_artifact(self, path: Path, fmt: str, runtime: str, **meta: Any) -> dict[str, Any]:
        """Registers a written artifact file; verify and measure fill its verification and latency.

        Args:
            path: the file (or folder) under the run folder.
            fmt: "onnx", "tflite", "tvm", ...
            runtime: the module under edgekit.runtimes that runs it.
            meta: e.g. precision="int8", sparse=True, tolerance={"max_abs_err": 1e-4, "min_top1": 0.99}.
        """
        path = Path(path)
        rel = path.relative_to(self.out).as_posix()
        self.report["artifacts"] = [a for a in self.report["artifacts"] if a["path"] != rel]
        entry = {"path": rel, "format": fmt, "runtime": runtime, "size_bytes": _size_of(path),
                 "sha256": sha256_file(path) if path.is_file() else None, "stage_index": self._stage_index,
                 **meta, "verification": None, "latency": {"source": "none"}}
        self.report["artifacts"].append(entry)
        return entry

    def add_section(self, title: str, markdown: str) -> None:
        """A Markdown section for report.md (e.g. a per-layer table, a plot link)."""
        sections = self.report.setdefault("sections", [])
        sections[:] = [s for s in sections if s["title"] != title]
        sections.append({"title": title, "markdown": markdown, "stage_index": self._stage_index})

    def artifacts(self, **match: Any) -> list[dict[str, Any]]:
        return [a for a in self.report["artifacts"] if all(a.get(k) == v for k, v in match.items())]

    def save(self) -> None:
        save_report(self.out, self.report)


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def count_params(model: Any) -> tuple[int, int]:
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int((p != 0).sum())
    return total, nonzero


def run_pipeline(ctx: RunContext, recipe: Recipe, base_fingerprint: str, resume: bool = True) -> dict[str, Any]:
    """Runs the recipe's stages into ctx.out, reusing finished ones from an earlier identical run."""
    import torch

    from edgekit.runfolder import claim_run_folder

    out = claim_run_folder(ctx.out)  # the marker first; torn .tmp files of a killed run go
    ctx.resume = resume
    old = _previous_report(out) if resume else None
    model = ctx.bundle.module
    ctx.reference = copy.deepcopy(model).eval()
    fp = base_fingerprint
    reusing = old is not None
    last_state: Path | None = None
    stage_task = ctx.progress.add_task("stages", total=len(recipe.stages)) if ctx.progress else None
    for i, spec in enumerate(recipe.stages):
        module = stage_registry.get(spec.name)
        fp = fingerprint(fp, spec.name, dataclasses.asdict(spec.settings))
        changes_model = getattr(module, "CHANGES_MODEL", True)
        state_path = out / "state" / f"{i:02d}-{spec.name}.pt"
        ctx._stage_index = i
        if reusing and _finished(old, i, fp, out, state_path if changes_model else None):
            ctx.report["stages"].append(old["stages"][i])
            ctx.report["artifacts"] += [a for a in old["artifacts"] if a.get("stage_index") == i]
            ctx.report.setdefault("sections", []).extend(
                s for s in old.get("sections", []) if s.get("stage_index") == i)
            if hasattr(module, "restore"):
                model = module.restore(model, spec.settings, ctx)
            if changes_model:
                last_state = state_path
            if stage_task is not None:
                ctx.progress.update(stage_task, description=f"stage {spec.name}: reused (finished in an earlier "
                                                            f"run)", advance=1)
            continue
        if reusing:
            reusing = False
            if last_state is not None:
                model.load_state_dict(torch.load(last_state, weights_only=True))
            _drop_artifacts_from(ctx, i)
        ctx._record = {}
        if stage_task is not None:
            ctx.progress.update(stage_task, description=f"stage {spec.name}")
        start = time.perf_counter()
        model = module.run(model, spec.settings, ctx)
        seconds = time.perf_counter() - start
        total, nonzero = count_params(model)
        record = {"name": spec.name, "seconds": round(seconds, 3), "params_total": total, "params_nonzero": nonzero,
                  "metrics": {}, "details": {}, **ctx._record, "fingerprint": fp,
                  "settings": dataclasses.asdict(spec.settings)}
        if changes_model:
            with atomic_path(state_path) as tmp:
                torch.save(model.state_dict(), tmp)
        ctx.report["stages"].append(record)
        ctx.save()  # after every stage: a killed run resumes from here
        if stage_task is not None:
            ctx.progress.advance(stage_task)
    if reusing and last_state is not None:
        model.load_state_dict(torch.load(last_state, weights_only=True))
    ctx.report["fingerprint"] = fp
    ctx.save()
    ctx.bundle.module = model
    return ctx.report


def _previous_report(out: Path) -> dict[str, Any] | None:
    try:
        from edgekit.report import load_report

        return load_report(out)
    except EdgekitError:
        return None


def _finished(old: dict[str, Any], i: int, fp: str, out: Path, state_path: Path | None) -> bool:
    if i >= len(old.get("stages", [])) or old["stages"][i].get("fingerprint") != fp:
        return False
    if state_path is not None and not state_path.is_file():
        return False
    for a in old.get("artifacts", []):
        if a.get("stage_index") == i:
            p = out / a["path"]
            if not p.exists() or (a.get("sha256") and p.is_file() and sha256_file(p) != a["sha256"]):
                return False
    return True


def _drop_artifacts_from(ctx: RunContext, i: int) -> None:
    keep = [a for a in ctx.report["artifacts"] if a.get("stage_index", -1) < i]
    ctx.report["artifacts"] = keep
    # Checkpoints of this stage and later ones are stale; artifacts are overwritten in place by their stages.
    state = ctx.out / "state"
    for p in state.glob("*.pt") if state.is_dir() else []:
        if int(p.name[:2]) >= i:
            p.unlink()
