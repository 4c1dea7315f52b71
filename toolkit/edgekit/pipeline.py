"""Recipe -> ordered stages, one run folder, resumable.

Before anything runs, the recipe's order is checked against each stage's contract (edgekit.contract). While it runs,
the context tracks the model's version (the last stage that changed it) and its pruning masks: every artifact
records the version it was made from, and artifacts made from an older version are moved to superseded/ as soon as a
stage changes the model. Each stage that changes the model gets a chain point (quality, params, nonzeros, size).

Each stage's record carries a fingerprint of everything upstream (model, weights, data, target, threads and the
settings of every earlier stage). A second run with the same fingerprint reuses a finished stage: its model state
(and masks) are reloaded from the run folder's state/ and its artifacts are kept, if their files still match their
sha256.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import child, heap
from edgekit import stages as stage_registry
from edgekit.contract import Contract, contract_of
from edgekit.data import DataBundle
from edgekit.errors import EdgekitError
from edgekit.fileio import atomic_path, fingerprint, sha256_file
from edgekit.recipe import Recipe, StageSpec, load_recipe, recipe_names, recipes_dir  # noqa: F401 (re-exported)
from edgekit.report import Artifact, ChainPoint, FileRecord, StageResult, save_report, typed
from edgekit.runfolder import restore_superseded, supersede, sweep
from edgekit.targets import Target
from edgekit.zoo import ModelBundle

QUALITY_INPUTS = 2048  # the quality split: the first inputs of the test split; every quality in the chain uses it


@dataclass
class RunContext:
    """What every stage sees: the run folder, target, data, the report being written, and the model's history."""

    out: Path
    target: Target
    bundle: ModelBundle
    data: DataBundle
    threads: int
    report: dict[str, Any]
    progress: Any = None
    device: str | None = None  # device URI for measurement (None: this machine for the host target)
    reference: Any = None  # the model as loaded (torch), for agreement metrics and the baseline artifacts
    console: Any = None
    recipe: Recipe | None = None
    budget: float | None = None  # the run's quality budget from the loaded model (--max-quality-drop; metric's unit)
    metric: Any = None  # the run's quality metric (edgekit.quality), chosen by the API
    model_version: int = -1  # index of the last stage that changed the model (-1: as loaded)
    masks: Any = None  # edgekit.masks.Mask of the pruned weights, carried through the chain
    resume: bool = True  # False (--fresh): stages also ignore their own checkpoints (lottery rounds, a study)
    _record: dict[str, Any] = field(default_factory=dict)
    _after: ChainPoint | None = None
    _stage_index: int = -1
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def artifacts_dir(self) -> Path:
        d = self.out / "artifacts"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def native(self) -> Any:
        """The model as a file (importers.native.NativeModel) when it has no torch form and the native route runs;
        None when the stages get a torch model."""
        return self.bundle.without_torch

    @property
    def signature(self) -> Any:
        """The loaded model's inputs and outputs (edgekit.signature.Signature): every artifact keeps it if it can."""
        return self.bundle.signature

    @property
    def example_input(self) -> np.ndarray:
        return self.data.x_test[:1].astype(np.float32)

    @property
    def stage_name(self) -> str:
        return self.recipe.stages[self._stage_index].name if self.recipe and self._stage_index >= 0 else ""

    def quality_split(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The inputs (and labels) every quality figure of the chain is measured on."""
        y = None if self.data.y_test is None else self.data.y_test[:QUALITY_INPUTS]
        return self.data.x_test[:QUALITY_INPUTS], y

    def reference_logits(self, split: str = "test") -> np.ndarray:
        """Logits of the model as loaded on the test (or train) split; computed once."""
        key = f"ref_logits_{split}"
        if key not in self._cache:
            from edgekit.train import predict

            x, _ = self.quality_split()
            if split == "test" and len(self.data.x_test) == len(x):  # the quality split is the whole test split
                self._cache[key] = self.model_logits(self.reference, -1)
            else:
                self._cache[key] = predict(self.reference, self.data.x_test if split == "test" else self.data.x_train)
        return self._cache[key]

    def reference_outputs(self) -> list[np.ndarray]:
        """Every output of the model as loaded on the quality split: what label-free metrics score against."""
        return self.model_outputs(self.reference, -1)

    def quality_of(self, outputs: Any) -> float:
        """The run's metric (edgekit.quality) for outputs of the quality split's first inputs: against its labels,
        or against the loaded model's outputs."""
        from edgekit.quality import as_outputs

        outputs = as_outputs(outputs)
        _, y = self.quality_split()
        n = len(outputs[0])
        return float(self.metric.score(outputs, None if y is None else y[:n],
                                       [r[:n] for r in self.reference_outputs()]))

    def quality_of_logits(self, logits: np.ndarray) -> float:
        """The run's metric for the first output only (the training stages' classifiers)."""
        return self.quality_of([logits])

    def drop(self, before: float | None, after: float | None) -> float | None:
        """How much worse `after` is than `before`, in the metric's unit (points, or dB)."""
        from edgekit.quality import drop

        return drop(self.metric, before, after)

    def model_outputs(self, model: Any, version: int | None = None) -> list[np.ndarray]:
        """Every output of the model at `version` (default: the current one) on the quality split, computed once per
        version. Only for a finished version: not inside a stage that is changing the model."""
        from edgekit.train import predict_outputs

        version = self.model_version if version is None else version
        key = f"outputs_v{version}"
        if key not in self._cache:
            self._cache[key] = predict_outputs(model, self.quality_split()[0])
        return self._cache[key]

    def model_logits(self, model: Any, version: int | None = None) -> np.ndarray:
        """The first output of the model at `version` on the quality split, one row per input."""
        first = self.model_outputs(model, version)[0]
        return first.reshape(len(first), -1)

    def point(self, model: Any, version: int | None = None) -> ChainPoint:
        """The chain point of a torch model: its quality, parameters and nonzeros."""
        total, nonzero, nbytes = _weight_counts(model)
        return ChainPoint(quality=self.quality_of(self.model_outputs(model, version)), params=total,
                          nonzeros=nonzero, weights_bytes=nbytes)

    def spent_budget(self) -> float:
        """Points of quality the chain has lost so far (torch model vs the loaded model), for a stage's budget."""
        base = (self.report.get("baseline") or {}).get("point")
        last = next((s.after for s in reversed(self.report["stages"]) if s.after is not None), None)
        if base is None or last is None or last.quality is None:
            return 0.0
        return max(0.0, self.drop(base.quality, last.quality) or 0.0)

    def set_after(self, point: ChainPoint) -> None:
        """The chain point after this stage, for a stage that changes what is deployed without changing the torch
        model (quantize: a new precision)."""
        self._after = point

    def record(self, *, metrics: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
               **fields: Any) -> None:
        """Adds to the current stage's one record (metrics and details merge; other fields replace)."""
        if metrics:
            self._record.setdefault("metrics", {}).update(metrics)
        if details:
            self._record.setdefault("details", {}).update(details)
        self._record.update(fields)

    def add_artifact(self, path: Path, fmt: str, runtime: str, *, precision: str = "fp32", sparse: bool = False,
                     tolerance: dict[str, Any] | None = None, role: str = "final",
                     companions: list[str] | None = None, **meta: Any) -> Artifact:
        """Registers a written artifact file; verify and measure fill its verification and latency.

        Args:
            path: the file (or folder) under the run folder.
            fmt: "onnx", "tflite", "tvm", ...
            runtime: the module under edgekit.runtimes that runs it.
            precision: "fp32", "int8" or "mixed".
            tolerance: verification tolerance, e.g. {"max_abs_err": None, "min_top1": 0.95} for INT8.
            role: "final" (artifacts/) or "baseline" (the model as loaded, baseline/).
            companions: run-folder paths of files that belong to the artifact (e.g. a sidecar JSON).
            meta: producer-specific fields kept in report.json (policy, quant, verify_with, host_runnable, ...).
        """
        path = Path(path)
        rel = path.relative_to(self.out).as_posix()
        art = Artifact(path=rel, format=fmt, runtime=runtime, size_bytes=_size_of(path),
                       sha256=sha256_file(path) if path.is_file() else None, stage_index=self._stage_index,
                       stage=self.stage_name, precision=precision, sparse=sparse,
                       model_version=self.model_version if role == "final" else -1, role=role, tolerance=tolerance,
                       companions=companions, signature=_signature_record(self.signature, fmt, path), meta=meta)
        group = self.report["artifacts"] if role == "final" else self.report["baseline"].setdefault("artifacts", [])
        group[:] = [a for a in group if a.path != rel] + [art]
        return art

    def add_file(self, path: Path, kind: str, **meta: Any) -> FileRecord:
        """Registers a non-model file written under artifacts/ (a policy, an adapter), so the report lists it."""
        path = Path(path)
        rel = path.relative_to(self.out).as_posix()
        rec = FileRecord(path=rel, kind=kind, size_bytes=_size_of(path), sha256=sha256_file(path),
                         stage_index=self._stage_index, stage=self.stage_name, model_version=self.model_version,
                         meta=meta)
        self.report["files"] = [f for f in self.report["files"] if f.path != rel] + [rec]
        return rec

    def skip(self, fmt: str, why: str) -> None:
        """A format (an export, an INT8 backend, a runtime) this stage could not make or run: one line in the report
        (`report.skipped`), and the run goes on with the others."""
        from edgekit.errors import first_line

        entry = {"stage": self.stage_name, "format": fmt, "why": first_line(why, 300),
                 "stage_index": self._stage_index}
        skipped = self.report.setdefault("skipped", [])
        skipped[:] = [s for s in skipped if (s["stage"], s["format"]) != (entry["stage"], fmt)] + [entry]

    def add_section(self, title: str, markdown: str) -> None:
        """A Markdown section for report.md (e.g. a per-layer table, a plot link)."""
        sections = self.report.setdefault("sections", [])
        sections[:] = [s for s in sections if s["title"] != title]
        sections.append({"title": title, "markdown": markdown, "stage_index": self._stage_index})

    def artifacts(self, **match: Any) -> list[Artifact]:
        return [a for a in self.report["artifacts"] if all(getattr(a, k) == v for k, v in match.items())]

    def all_artifacts(self) -> list[Artifact]:
        """Final and baseline artifacts (verify and measure handle both)."""
        return list(self.report["artifacts"]) + list((self.report.get("baseline") or {}).get("artifacts", []))

    def save(self) -> None:
        save_report(self.out, self.report)


def _signature_record(model_signature: Any, fmt: str, path: Path) -> dict[str, Any] | None:
    """Whether the artifact file kept the loaded model's signature, read from the file itself."""
    if model_signature is None:
        return None
    from edgekit import export as exporters
    from edgekit.export import _signature as sig

    note = sig.fallback_note(path) or (getattr(exporters.get(fmt), "SIGNATURE_NOTE", "")
                                       if fmt in exporters.formats() else "")
    return sig.record(model_signature, sig.read(fmt, path), note)


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def count_params(model: Any) -> tuple[int, int]:
    return _weight_counts(model)[:2]


def _weight_counts(model: Any) -> tuple[int, int, int]:
    """(parameters, nonzero parameters, bytes stored dense) of a torch model or a native model file."""
    if hasattr(model, "weight_counts"):  # importers.native.NativeModel: the weights stored in the file
        return model.weight_counts()
    total = nonzero = nbytes = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int((p != 0).sum())
        nbytes += p.numel() * p.element_size()
    return total, nonzero, nbytes


def run_pipeline(ctx: RunContext, recipe: Recipe, base_fingerprint: str, resume: bool = True) -> dict[str, Any]:
    """Runs the recipe's stages into ctx.out, reusing finished ones from an earlier identical run."""
    from edgekit.runfolder import claim_run_folder

    out = claim_run_folder(ctx.out)  # the marker first; torn .tmp files of a killed run go
    ctx.recipe = recipe
    ctx.resume = resume
    old = _previous_report(out) if resume else None
    model = ctx.bundle.module
    # The model as loaded: a copy only when a stage will change the model (a copy of vgg19's weights is 0.6 GB)
    changes = any(spec.contract.changes_model for spec in recipe.stages)
    ctx.reference = copy.deepcopy(model).eval() if changes else model.eval()
    _baseline_point(ctx, old, base_fingerprint)
    fp = base_fingerprint
    reusing = old is not None
    last_state: Path | None = None
    stage_task = ctx.progress.add_task("stages", total=len(recipe.stages)) if ctx.progress else None
    for i, spec in enumerate(recipe.stages):
        module = stage_registry.get(spec.name)
        contract = spec.contract
        fp = fingerprint(fp, spec.name, dataclasses.asdict(spec.settings))
        state_path = out / "state" / f"{i:02d}-{spec.name}.pt"
        ctx._stage_index = i
        if reusing and _finished(old, i, fp, out, state_path if contract.changes_model else None):
            _reuse(ctx, old, i)
            if hasattr(module, "restore"):
                model = module.restore(model, spec.settings, ctx)
            if contract.changes_model:
                last_state = state_path
                ctx.model_version = i
            if stage_task is not None:
                ctx.progress.update(stage_task, description=f"stage {spec.name}: reused (finished in an earlier "
                                                            f"run)", advance=1)
            continue
        if reusing:
            reusing = False
            if last_state is not None:
                model = _load_state(ctx, model, last_state)
            _drop_from(ctx, old, i)
        if stage_task is not None:
            ctx.progress.update(stage_task, description=f"stage {spec.name}")
        model = _run_stage(ctx, model, module, spec, contract, fp, state_path)
        if stage_task is not None:
            ctx.progress.advance(stage_task)
    if reusing and last_state is not None:
        model = _load_state(ctx, model, last_state)
    ctx.report["fingerprint"] = fp
    others = _outputs_of_other_stages(recipe)
    ctx.report["removed"] = sweep(out, ctx.report, others, len(recipe.stages))
    ctx.save()
    ctx.bundle.module = model
    return ctx.report


def _run_stage(ctx: RunContext, model: Any, module: Any, spec: StageSpec, contract: Contract, fp: str,
               state_path: Path) -> Any:
    import torch

    i = ctx._stage_index
    ctx._record = {}
    ctx._after = None
    if contract.changes_model:
        ctx.model_version = i  # what the stage writes is made from the model it returns
    start = time.perf_counter()
    child.drain()
    model = module.run(model, spec.settings, ctx)
    children = child.drain()
    heap.trim()  # what the stage loaded and released (runtimes, exporters' graphs) goes back to the system
    seconds = time.perf_counter() - start
    after = ctx._after
    if contract.changes_model:
        supersede(ctx.out, ctx.report, i, spec.name)
        after = after or ctx.point(model)
    total, nonzero = count_params(model)
    if after is not None and after.params is None:
        after.params, after.nonzeros = total, nonzero
    fields = {k: v for k, v in ctx._record.items() if k not in ("metrics", "details")}
    record = StageResult(name=spec.name, index=i, seconds=round(seconds, 3), fingerprint=fp,
                         settings=dataclasses.asdict(spec.settings), changes=sorted(contract.changes),
                         params_total=total, params_nonzero=nonzero, metrics=ctx._record.get("metrics", {}),
                         details=ctx._record.get("details", {}), after=after, peak_rss_mb=heap.peak_mb(),
                         children=children, extra=fields)
    if contract.changes_model:
        with atomic_path(state_path) as tmp:
            torch.save(model.state_dict(), tmp)
        masks_path = state_path.with_suffix(".masks.pt")
        if ctx.masks is not None:
            ctx.masks.save(masks_path)
        else:
            masks_path.unlink(missing_ok=True)
    ctx.report["stages"].append(record)
    ctx.save()  # after every stage: a killed run resumes from here
    return model


def _baseline_point(ctx: RunContext, old: dict[str, Any] | None, base_fp: str) -> None:
    """The model as loaded: the chain's first point (reused from an identical earlier run)."""
    base = ctx.report.setdefault("baseline", {})
    prev = (old or {}).get("baseline") or {}
    if prev.get("fingerprint") == base_fp and prev.get("point"):
        base["point"] = ChainPoint.from_dict(prev["point"]) if isinstance(prev["point"], dict) else prev["point"]
    else:
        base["point"] = ctx.point(ctx.reference, -1)
    base["fingerprint"] = base_fp
    base.setdefault("artifacts", [])


def _reuse(ctx: RunContext, old: dict[str, Any], i: int) -> None:
    ctx.report["stages"].append(old["stages"][i])
    for key in ("artifacts", "files"):
        ctx.report[key] += [a for a in old[key] if a.stage_index == i]
    ctx.report["baseline"]["artifacts"] += [a for a in old["baseline"]["artifacts"] if a.stage_index == i]
    ctx.report["superseded"] += [e for e in old.get("superseded", []) if e.get("by_index") == i]
    ctx.report.setdefault("sections", []).extend(s for s in old.get("sections", []) if s.get("stage_index") == i)
    ctx.report.setdefault("skipped", []).extend(s for s in old.get("skipped", []) if s.get("stage_index") == i)


def _load_state(ctx: RunContext, model: Any, state_path: Path) -> Any:
    import torch

    from edgekit.masks import Mask

    model.load_state_dict(torch.load(state_path, weights_only=True))
    masks_path = state_path.with_suffix(".masks.pt")
    ctx.masks = Mask.load(masks_path, model) if masks_path.is_file() else None
    return model


def _outputs_of_other_stages(recipe: Recipe) -> set[str]:
    """Outputs (under the run folder) of stage types the recipe does not have."""
    mine = set(recipe.names())
    owned: set[str] = set()
    for name in stage_registry.available():
        if name in mine:
            continue
        module = stage_registry.get(name)
        try:
            owned |= set(contract_of(module, module.Settings()).outputs)
        except Exception:  # noqa: BLE001 - a stage whose defaults cannot be built owns nothing we can name
            continue
    mine_outputs = {o for s in recipe.stages for o in s.contract.outputs}
    return owned - mine_outputs


def _previous_report(out: Path) -> dict[str, Any] | None:
    try:
        from edgekit.report import SCHEMA, load_report

        old = load_report(out)
        return typed(old) if old.get("schema") == SCHEMA else None
    except (EdgekitError, TypeError, ValueError):
        return None


def _finished(old: dict[str, Any], i: int, fp: str, out: Path, state_path: Path | None) -> bool:
    if i >= len(old.get("stages", [])) or old["stages"][i].fingerprint != fp:
        return False
    if state_path is not None and not state_path.is_file():
        return False
    for a in old["artifacts"] + old["files"] + old["baseline"]["artifacts"]:
        if a.stage_index == i:
            p = out / a.path
            if not p.exists() or (a.sha256 and p.is_file() and sha256_file(p) != a.sha256):
                return False
    return all((out / s["path"]).exists() for s in old.get("superseded", [])
               if i in (s.get("stage_index"), s.get("by_index")))


def _drop_from(ctx: RunContext, old: dict[str, Any], i: int) -> None:
    """Stage i and the ones after it run again: their records and checkpoints are stale, and what a reused stage
    made and one of them superseded comes back (a stage that changes the model supersedes it again)."""
    for key in ("artifacts", "files"):
        ctx.report[key] = [a for a in ctx.report[key] if a.stage_index < i]
        ctx.report[key] += restore_superseded(ctx.out, old.get("superseded", []), i, key)
    base = ctx.report["baseline"]
    base["artifacts"] = [a for a in base.get("artifacts", []) if a.stage_index < i]
    state = ctx.out / "state"
    for p in state.glob("*.pt") if state.is_dir() else []:
        if p.name[:2].isdigit() and int(p.name[:2]) >= i:
            p.unlink()
