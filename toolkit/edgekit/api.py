"""Public functions: compress(), load_model(), load_target(), load_data()."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgekit.data import load_data
from edgekit.errors import SettingsError
from edgekit.fileio import fingerprint, sha256_file
from edgekit.importers import check_import
from edgekit.targets import load_target
from edgekit.zoo import calibrate_batchnorm, load_model

__all__ = ["compress", "load_model", "load_target", "load_data", "default_out_dir", "parse_shape"]


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,3,224,224' -> (1, 3, 224, 224)."""
    if not text:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise SettingsError(f"--input-shape must be integers like 1,3,224,224, got '{text}'") from None
    if len(shape) != 4 or any(s <= 0 for s in shape):
        raise SettingsError(f"--input-shape must be N,C,H,W with positive sizes, got '{text}'")
    return shape


def default_out_dir(model: str | None, target: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).stem if model and ("/" in model or "." in model)
                  else (model or "digits_cnn"))
    return Path("runs") / f"{stem}-{target}"


def compress(model: str | None = None, target: str = "host", *, recipe: str | dict | None = None,
             data: str | None = None, weights: str | None = None, input_shape: tuple[int, ...] | None = None,
             threads: int | None = None, out: str | Path | None = None, device: str | None = None,
             overrides: dict[str, dict[str, Any]] | None = None, resume: bool = True, progress: Any = None,
             console: Any = None) -> dict[str, Any]:
    """Runs a recipe on a model for a target and writes the run folder; returns report.json's content.

    Args:
        model: zoo name, .onnx/.pt2 path, module:factory, or None for the built-in digits CNN.
        target: target name or .toml path.
        recipe: recipe name, YAML path or mapping; default: the target's default recipe.
        data: "digits", image folder, .npz, or None (the model's own data, else synthetic + agreement).
        weights: state-dict file for zoo models.
        input_shape: N,C,H,W when it cannot be inferred.
        threads: runtime threads (default: the target's).
        out: run folder (default runs/<model>-<target>).
        device: device URI to measure on (ssh://..., adb://..., node, chromium); None: this machine for host.
        overrides: {stage: {setting: value}} on top of the recipe.
        resume: reuse finished stages of an identical earlier run in `out`.
        progress: rich Progress for the stages' bars.
    """
    from edgekit.pipeline import Recipe, RunContext, StageSpec, load_recipe, run_pipeline
    from edgekit.report import new_report

    tgt = load_target(target)
    rec = load_recipe(recipe or tgt.default_recipe, overrides)
    if not any(s.name == "check" for s in rec.stages):
        # "Will it be faster?" is answered before any stage trains or converts anything.
        from edgekit.stages.check import Settings as CheckSettings

        rec = Recipe((StageSpec("check", CheckSettings()), *rec.stages), rec.source)
    bundle = load_model(model, weights, input_shape, progress)
    ds = load_data(data, bundle.input_shape, bundle.default_data)
    # A model imported from another tool's file is checked against that file's runtime before any stage runs.
    check_import(bundle, ds.calibration(64), f"calibration inputs of {ds.name}")
    if bundle.weights.startswith("initialisation") and calibrate_batchnorm(bundle.module, ds.calibration(64)):
        bundle.weights += "; BatchNorm statistics set from 64 calibration inputs"
    threads = threads or tgt.threads
    if threads < 1:
        raise SettingsError(f"--threads must be at least 1, got {threads}")
    out = Path(out) if out else default_out_dir(model, tgt.name)
    weights_id = sha256_file(weights) if weights else bundle.weights
    base_fp = fingerprint(bundle.name, weights_id, bundle.input_shape, ds.name, ds.description, tgt.name, threads,
                          device)
    report = new_report(model=bundle.name, target=tgt.name, weights=bundle.weights,
                        input_shape=list(bundle.input_shape),
                        target_facts={k: v for k, v in asdict(tgt).items() if k != "runtimes"},
                        data={"name": ds.name, "description": ds.description, "quality_metric": ds.quality_metric,
                              "labelled": ds.labelled},
                        recipe=rec.as_dict(), threads=threads, device=device,
                        **({"import": bundle.import_info} if bundle.import_info else {}))
    ctx = RunContext(out=out, target=tgt, bundle=bundle, data=ds, threads=threads, report=report, progress=progress,
                     device=device, console=console)
    return run_pipeline(ctx, rec, base_fp, resume=resume)
