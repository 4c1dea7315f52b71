"""What the measure stage writes from the latencies devices return (this module is its helper): each artifact's `latency` (the primary device's
figure) and `latencies` (every device's figure; not for this machine measured in process), latency profiles under the run folder, and a
report section. Devices never write the report; this module does, for the stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgekit.devices import LatencySource
    from edgekit.pipeline import RunContext
    from edgekit.report import Artifact, Latency


def record_latencies(results: list[tuple[Artifact, list[Latency]]], source: LatencySource, ctx: RunContext
                     ) -> list[str]:
    """Fills the artifacts' latency fields from one Latency per device (in `source.devices` order), writes the
    profiles of measured entries that carry raw results, and adds a section when several devices or a remote one
    measured. Returns the profile files written (relative to the run folder)."""
    from edgekit.latency import profile as prof

    profiles: dict[str, dict[str, Any]] = {}
    rows = []
    for a, entries in results:
        raws = [e.extra.pop("raw", None) for e in entries]
        _compare_outputs(entries, raws)
        for e, raw in zip(entries, raws, strict=True):
            rows.append(_row(a, e))
            if e.source == "measured" and raw:
                _add_to_profile(profiles, a, e, raw, ctx)
        measured = [e for e in entries if e.source == "measured"]
        primary = next((e for e in measured if _device_of(e) == source.primary), measured[0] if measured else None)
        a.latency = dataclasses.replace(primary or entries[0], extra=dict((primary or entries[0]).extra))
        a.latencies = None if source.local else entries
    written = [str(prof.save_profile(p, root=ctx.out / "profiles").relative_to(ctx.out)) for p in profiles.values()]
    if rows and (len(source.devices) > 1 or not source.local):
        title = ("Browser latency (onnxruntime-web)" if ctx.target.device_kind == "browser" else "Device latency")
        ctx.add_section(title, "\n".join([
            "Measured on the device itself (the device names its facts). When several devices measured, "
            "`latency` in report.json holds the primary, `latencies` every device's figure"
            + (" (WebAssembly is first compiled by a baseline tier; warm-up runs until it is optimised)."
               if ctx.target.device_kind == "browser" else "."), "",
            "| artifact | engine / device | p50 ms | p90 ms | runs | device | runtime |", "|---|---|---:|---:|---:|---|---|",
            *rows, "", *(f"- profile: `{w}`" for w in written)]))
    return written


def _device_of(e: Latency) -> str | None:
    return e.engine or e.via


def _row(a: Artifact, e: Latency) -> str:
    who = e.engine or (e.via or "").split("?", 1)[0]
    if e.source == "measured":
        return f"| `{a.path}` | {who} | {e.p50_ms:.4g} | {e.p90_ms:.4g} | {e.runs} | {e.device} | {e.runtime} |"
    return f"| `{a.path}` | {who} | – | – | – | {e.reason} | {e.runtime} |"


def _compare_outputs(entries: list[Latency], raws: list[Any]) -> None:
    """Engines that ran the same runtime on the same input must compute the same output (Chromium vs Node)."""
    ref = next(((e, r) for e, r in zip(entries, raws, strict=True) if r and r.get("output")), None)
    if ref is None:
        return
    base = np.asarray(ref[1]["output"], np.float32).ravel()
    for e, r in zip(entries, raws, strict=True):
        if e is not ref[0] and r and r.get("output") and len(r["output"]) == len(base):
            diff = np.abs(np.asarray(r["output"], np.float32).ravel() - base).max()
            e.extra[f"output_max_abs_diff_vs_{_device_of(ref[0])}"] = float(diff)


def _add_to_profile(profiles: dict[str, dict[str, Any]], a: Artifact, e: Latency, raw: dict[str, Any],
                    ctx: RunContext) -> None:
    """One profile per device id (the device's own profile when it made one, e.g. benchmark_model's)."""
    from edgekit.latency import profile as prof

    if "profile" in raw:  # a device that builds its profiles itself (adb)
        p = raw["profile"]
        if p["device_id"] in profiles:
            profiles[p["device_id"]]["entries"].extend(p["entries"])
        else:
            profiles[p["device_id"]] = p
        return
    facts = e.device_facts or raw.get("device") or {}
    device_id = e.device_id or prof.device_id_from_facts(facts, e.via or "local")
    if device_id not in profiles:
        source = e.engine or (e.via or "local").split("://", 1)[0]
        profiles[device_id] = prof.new_profile(ctx.target.name, device_id, facts, source)
    extra: dict[str, Any] = {"device": e.device}
    if raw.get("samples_ms"):
        extra["samples_ms"] = [round(s, 4) for s in raw["samples_ms"]]
    if (e.extra.get("farm") or {}).get("device"):
        extra["farm_device"] = e.extra["farm"]["device"]
    prof.add_entry(profiles[device_id], Path(a.path).name, a.format, e.runtime, e.threads,
                   {"p50_ms": e.p50_ms, "p90_ms": e.p90_ms, "min_ms": e.min_ms, "mean_ms": e.mean_ms,
                    "runs": e.runs, "warmup": e.extra.get("warmup_runs")}, raw.get("per_op") or [],
                   sha256=a.sha256 or raw.get("sha256") or _bundle_model_sha(ctx.out / a.path), via=e.via or "local",
                   conditions=e.conditions, extra=extra)


def _bundle_model_sha(path: Path) -> str:
    from edgekit.fileio import sha256_file

    f = path / "model.onnx" if path.is_dir() else path
    return sha256_file(f) if f.is_file() else ""


def add_op_profile_section(arts: list[Artifact], ctx: RunContext) -> None:
    """A report section per run: the per-layer table of each profiled artifact (beside the target's predictor where
    it covers the runtime) and one plot."""
    from edgekit.latency import op_profile

    profiled = [a for a in arts if a.latency.extra.get("per_layer")]
    if not profiled:
        return
    parts = []
    for a in profiled:
        check = _predicted_layers(a, ctx)
        if check:
            a.latency.extra["per_layer_prediction"] = check
        parts.append(op_profile.markdown(a, check))
    plot = op_profile.plot_layers(ctx.out / "op_profile.png", profiled)
    if plot:
        parts.append(f"![time per layer]({plot.name})")
    ctx.add_section("Where the time goes (per-operator profile)", "\n\n".join(parts))


def _predicted_layers(a: Artifact, ctx: RunContext) -> dict[str, Any] | None:
    """Per-layer predictions for artifact `a` from the target's profile, with the per-layer error, or None."""
    from edgekit.errors import EdgekitError
    from edgekit.latency.predictor import load_predictor

    try:
        predictor = load_predictor(ctx.target.name)
        if predictor is None or not predictor.can_predict_ops(a.runtime, ctx.threads):
            return None
        return predictor.check_layers(ctx.out / a.path, a.runtime, ctx.threads, a.latency.extra["per_op"],
                                      a.latency.p50_ms)
    except EdgekitError:
        return None
