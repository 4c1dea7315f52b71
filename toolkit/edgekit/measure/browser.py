"""The browser target measured for real: onnxruntime-web in Node and in headless Chromium on this machine.

Node: the artifact is loaded into a kept-alive Node process (edgekit.runtimes.onnxruntime_web) and timed inside it.
Chromium: the artifact's web bundle is served from 127.0.0.1 by a throw-away HTTP server, headless Chromium (fresh
profile, no network services) opens its index.html with ?bench=1, and the page times warm-up + N runs of the same
`run()` a web developer calls and POSTs the samples back (server and launch: measure/_web_server.py, shared with the
TFLite page). Both are real JavaScript engines running the target's runtime, so their figures are measured latencies
of the browser target (on this machine's CPU, which the device name says).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import RuntimeUnavailable, SettingsError
from edgekit.measure._web_server import (
    INPUT_PATH,
    RESULT_PATH,
    chromium_binary,
    chromium_version,
    page_result,
    require_chromium,
)
from edgekit.report import Latency
from edgekit.runtimes import Timing
from edgekit.targets import host_facts

if TYPE_CHECKING:
    from edgekit.pipeline import RunContext
    from edgekit.report import Artifact

ENGINES = ("node", "chromium")
MIN_WARMUP_MS = 1000.0  # both engines tier WebAssembly up from a baseline compiler; see ort_node_runner.js
CHROMIUM_TIMEOUT_S = 300.0
PROFILE_RUNS = 10  # runs of ORT's own profiler in Node for per-operator times (0: off)


def host_cpu() -> str:
    f = host_facts()
    return f"{f['cpu']} ({f['cores']} cores, {f['arch']})"


def time_in_chromium(bundle: Path, x: np.ndarray, warmup: int, runs: int, threads: int = 1,
                     timeout: float = CHROMIUM_TIMEOUT_S) -> dict[str, Any]:
    """Opens the bundle's index.html in headless Chromium and returns what the page posted.

    Returns:
        {"samples_ms", "output", "user_agent", "onnxruntime_web", "warmup_runs", "chromium": version, ...}.
    """
    binary = require_chromium()
    query = (f"bench=1&input={INPUT_PATH}&report={RESULT_PATH}&warmup={warmup}&runs={runs}"
             f"&min_warmup_ms={MIN_WARMUP_MS:g}&threads={threads}")
    result = page_result(binary, Path(bundle), query, x, timeout, "page")
    return {**result, "chromium": chromium_version(binary)}


def time_in_node(model: Path, x: np.ndarray, warmup: int, runs: int, threads: int = 1) -> dict[str, Any]:
    """Times an .onnx file or bundle in onnxruntime-web under Node; returns samples, output and versions."""
    from edgekit.runtimes.onnxruntime_web import NodeOrtWebRunner

    runner = NodeOrtWebRunner(model, threads)
    try:
        output = runner(x)
        t = runner.time(x, warmup, runs, MIN_WARMUP_MS)
        per_op = runner.per_op(x, 2, PROFILE_RUNS) if PROFILE_RUNS else []
        return {**t, "output": output.ravel().tolist(), "runtime": runner.runtime, "versions": runner.versions,
                "per_op": per_op}
    finally:
        runner.close()


def engines_for(device: str | None) -> tuple[str, ...]:
    if device in (None, ""):
        return ENGINES
    if device not in ENGINES:
        raise SettingsError(f"browser target: --device must be one of {', '.join(ENGINES)}, got '{device}'")
    return (device,)


def measure_artifact(path: Path, x: np.ndarray, engines: tuple[str, ...], warmup: int, runs: int,
                     threads: int = 1) -> list[Latency]:
    """Measures one .onnx file or web bundle in each engine; returns one latency entry per engine.

    Entries: measured Latency records with `engine` (and extra["raw"]: samples and versions for profiles, which
    callers drop from report.json), or Latency.none with the reason when an engine is not installed and was not
    asked for explicitly.
    """
    from edgekit.runtimes.onnxruntime_web import package_version

    runtime = f"onnxruntime-web {package_version()} (wasm, SIMD128)"
    out, node_output = [], None
    for engine in engines:
        if engine == "node":
            r = time_in_node(path, x, warmup, runs, threads)
            node_output = np.asarray(r["output"], np.float32)
            device = f"node {r['versions']['node']} (V8 {r['versions']['v8']}) on host: {host_cpu()}"
            extra: dict[str, Any] = {}
        else:
            if chromium_binary() is None and len(engines) > 1:
                out.append(Latency.none("headless Chromium is not installed (Debian package `chromium`)",
                                        engine="chromium", runtime=runtime))
                continue
            try:
                r = _time_bundle_in_chromium(Path(path), x, warmup, runs, threads)
            except RuntimeUnavailable as e:
                if len(engines) == 1:  # asked for explicitly (--device chromium): fail loudly
                    raise
                out.append(Latency.none(str(e), engine="chromium", runtime=runtime))
                continue
            device = f"chromium {r['chromium']} (headless) on host: {host_cpu()}"
            extra = {"cross_origin_isolated": r.get("cross_origin_isolated")}
            if node_output is not None and r.get("output"):
                # Same runtime, same input: the browser must compute what Node computed.
                diff = np.abs(np.asarray(r["output"], np.float32).ravel() - node_output.ravel()).max()
                extra["output_max_abs_diff_vs_node"] = float(diff)
        timing = Timing.from_samples([s / 1e3 for s in r["samples_ms"]])
        out.append(Latency.measured(timing, device=device, runtime=runtime, threads=threads, engine=engine, via=engine,
                                    warmup_runs=r.get("warmup_runs"), **extra, raw=r))
    return out


def _time_bundle_in_chromium(path: Path, x: np.ndarray, warmup: int, runs: int, threads: int) -> dict[str, Any]:
    if path.is_dir():
        return time_in_chromium(path, x, warmup, runs, threads)
    from edgekit.export.web import write_bundle

    # A plain .onnx artifact (e.g. an INT8 model from another stage) is timed through the same page.
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        bundle = write_bundle(path, Path(tmp) / "bundle", threads)
        return time_in_chromium(bundle, x, warmup, runs, threads)


def measure_artifacts_in_browsers(arts: list[Artifact], settings: Any, ctx: RunContext) -> None:
    """The measure stage for the browser target: fills each artifact's `latency` (primary engine: Chromium when
    measured, else Node) and `latencies` (every engine), writes profiles and a report section."""
    engines = engines_for(ctx.device)
    results: list[tuple[Artifact, list[Latency]]] = []
    x = ctx.example_input
    for a in arts:
        if a.format == "tflite" and "chromium" in engines and chromium_binary() is not None:
            entries = _measure_tflite(ctx.out / a.path, x, settings.warmup, settings.runs, ctx.threads)
        elif a.format not in ("web", "onnx"):
            a.latency = Latency.none(f"no browser runtime for {a.format} artifacts is measured by edgekit",
                                     device=ctx.target.description)
            continue
        else:
            entries = measure_artifact(ctx.out / a.path, x, engines, settings.warmup, settings.runs, ctx.threads)
        results.append((a, entries))
    record_browser_results(results, ctx)


def _measure_tflite(path: Path, x: np.ndarray, warmup: int, runs: int, threads: int) -> list[Latency]:
    """A TFLite artifact (e.g. a sparse one) in Chromium through the TFLite WebAssembly runtime (tfjs-tflite)."""
    from edgekit.measure.tflite_web import runtime_name, time_tflite_in_chromium

    r = time_tflite_in_chromium([path], x, warmup, runs, threads)
    samples = r["samples_ms"][0]
    timing = Timing.from_samples([s / 1e3 for s in samples])
    raw = {**r, "samples_ms": samples, "output": (r.get("outputs") or [[]])[0]}
    return [Latency.none("no TFLite runtime for Node is measured by edgekit", engine="node", runtime=runtime_name()),
            Latency.measured(timing, device=f"chromium {r['chromium']} (headless) on host: {host_cpu()}",
                             runtime=r["runtime"], threads=threads, engine="chromium", via="chromium", raw=raw)]


def record_browser_results(results: list[tuple[Artifact, list[Latency]]], ctx: RunContext) -> None:
    """Writes the entries into the artifacts, profiles (one per engine) under the run folder, and a report section."""
    from edgekit.measure import profile as prof

    profiles: dict[str, dict[str, Any]] = {}
    rows = []
    for a, entries in results:
        raws = [e.extra.pop("raw", None) for e in entries]
        measured = [e for e in entries if e.source == "measured"]
        primary = next((e for e in measured if e.engine == "chromium"), measured[0] if measured else entries[0])
        a.latencies = entries
        for e, raw in zip(entries, raws, strict=True):
            rows.append(f"| `{a.path}` | {e.engine} | "
                        + (f"{e.p50_ms:.4g} | {e.p90_ms:.4g} | {e.runs} | {e.device} | {e.runtime} |"
                           if e.source == "measured" else f"– | – | – | {e.reason} | {e.runtime} |"))
            if e.source != "measured":
                continue
            facts = {**host_facts(), "engine": e.engine, "engine_version": _engine_version(raw),
                     "user_agent": raw.get("user_agent"), "onnxruntime_web": e.runtime}
            p = profiles.get(e.engine)
            if p is None:
                p = profiles[e.engine] = prof.new_profile(
                    ctx.target.name, prof.device_id_from_facts(facts, via=e.engine), facts, e.engine)
            e.device_id = p["device_id"]
            name = Path(a.path).name
            prof.add_entry(p, name, a.format, e.runtime, e.threads,
                           {"p50_ms": e.p50_ms, "p90_ms": e.p90_ms, "min_ms": e.min_ms, "mean_ms": e.mean_ms,
                            "runs": e.runs, "warmup": e.extra.get("warmup_runs")}, raw.get("per_op") or [],
                           sha256=a.sha256 or _bundle_model_sha(ctx.out / a.path), via=e.engine,
                           extra={"device": e.device, "samples_ms": [round(s, 4) for s in raw["samples_ms"]]})
        a.latency = dataclasses.replace(primary, extra=dict(primary.extra))  # after the profile named the device
    written = [str(prof.save_profile(p, root=ctx.out / "profiles").relative_to(ctx.out)) for p in profiles.values()]
    if rows:
        ctx.add_section("Browser latency (onnxruntime-web)", "\n".join([
            "Measured in real JavaScript engines on this machine: Node and headless Chromium, each after warm-up "
            "(WebAssembly is first compiled by a baseline tier). `latency` in report.json holds the primary "
            "(Chromium when measured), `latencies` every engine.", "",
            "| artifact | engine | p50 ms | p90 ms | runs | device | runtime |", "|---|---|---:|---:|---:|---|---|",
            *rows, "", *(f"- profile: `{w}`" for w in written)]))
    ctx.record(details={"engines": sorted({e.engine for _, es in results for e in es if e.source == "measured"}),
                        "profiles": written})


def _engine_version(raw: dict[str, Any]) -> str:
    if "chromium" in raw:
        return f"chromium {raw['chromium']}"
    return f"node {raw['versions']['node']}"


def _bundle_model_sha(path: Path) -> str:
    from edgekit.fileio import sha256_file

    f = path / "model.onnx" if path.is_dir() else path
    return sha256_file(f) if f.is_file() else ""
