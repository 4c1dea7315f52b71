"""`node` and `chromium`: the browser target's devices, real JavaScript engines on this machine running
onnxruntime-web (and, in Chromium, the TFLite WebAssembly runtime for .tflite files). How each engine is driven:
edgekit.devices.browser and edgekit.devices.tflite_web."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.devices import BaseDevice, Job
from edgekit.devices._web_server import (
    INPUT_PATH,
    RESULT_PATH,
    chromium_binary,
    chromium_version,
    page_result,
    require_chromium,
)
from edgekit.devices.timing import Timing
from edgekit.errors import RuntimeUnavailable, SettingsError
from edgekit.report import Latency
from edgekit.targets import host_facts

if TYPE_CHECKING:
    from edgekit.report import Latency
    from edgekit.targets import Target


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
    from edgekit.runtimes._web_bundle import write_bundle

    # A plain .onnx artifact (e.g. an INT8 model from another stage) is timed through the same page.
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        bundle = write_bundle(path, Path(tmp) / "bundle", threads)
        return time_in_chromium(bundle, x, warmup, runs, threads)


def _measure_tflite(path: Path, x: np.ndarray, warmup: int, runs: int, threads: int) -> list[Latency]:
    """A TFLite artifact (e.g. a sparse one) in Chromium through the TFLite WebAssembly runtime (tfjs-tflite)."""
    from edgekit.devices.tflite_web import runtime_name, time_tflite_in_chromium

    r = time_tflite_in_chromium([path], x, warmup, runs, threads)
    samples = r["samples_ms"][0]
    timing = Timing.from_samples([s / 1e3 for s in samples])
    raw = {**r, "samples_ms": samples, "output": (r.get("outputs") or [[]])[0]}
    return [Latency.none("no TFLite runtime for Node is measured by edgekit", engine="node", runtime=runtime_name()),
            Latency.measured(timing, device=f"chromium {r['chromium']} (headless) on host: {host_cpu()}",
                             runtime=r["runtime"], threads=threads, engine="chromium", via="chromium", raw=raw)]


class _EngineDevice(BaseDevice):
    engine = ""

    def __init__(self, uri: str, target: Target | None = None, **_: Any) -> None:
        super().__init__(target)
        if uri != self.engine:
            raise SettingsError(f"device '{uri}': the {self.engine} device takes no options")
        self.uri = self.engine

    def check(self, facts: dict[str, Any]) -> None:
        if self.target is not None and self.target.device_kind != "browser":
            raise SettingsError(f"--device {self.engine} measures the browser target (wasm), not {self.target.name}")

    def _read_facts(self) -> dict[str, Any]:
        from edgekit.targets import host_facts

        return {**host_facts(), "engine": self.engine}

    def runtimes(self) -> tuple[str, ...]:
        return ("onnxruntime-web",)

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """One Latency per artifact; its samples, output and versions ride in extra["raw"] (for profiles)."""
        from edgekit.report import Latency

        self.check({})
        out = []
        for j in artifacts:
            if j.input is None:
                raise SettingsError(f"{self.engine}: timing {j.path.name} needs an example input")
            x = np.asarray(j.input, np.float32)
            if j.fmt in ("web", "onnx"):
                (lat,) = measure_artifact(j.path, x, (self.engine,), warmup, runs, threads)
            elif j.fmt == "tflite":
                lat = self._tflite(j, x, warmup, runs, threads)
            else:
                lat = Latency.none(f"no browser runtime for {j.fmt} artifacts is measured by edgekit",
                                   engine=self.engine)
            if lat.source == "measured":
                self._provenance(lat)
            out.append(lat)
        return out

    def _tflite(self, job: Job, x: np.ndarray, warmup: int, runs: int, threads: int) -> Latency:
        from edgekit.devices.tflite_web import runtime_name
        from edgekit.report import Latency

        return Latency.none("no TFLite runtime for Node is measured by edgekit", engine="node",
                            runtime=runtime_name())

    def _provenance(self, lat: Latency) -> None:
        from edgekit.latency.profile import device_id_from_facts

        raw = lat.extra.get("raw") or {}
        version = f"chromium {raw['chromium']}" if "chromium" in raw else f"node {raw['versions']['node']}"
        facts = {**self.facts(), "engine_version": version, "user_agent": raw.get("user_agent"),
                 "onnxruntime_web": lat.runtime}
        lat.device_facts = facts
        lat.device_id = device_id_from_facts(facts, via=self.engine)

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class NodeDevice(_EngineDevice):
    """onnxruntime-web in a kept-alive Node process."""

    scheme = engine = "node"

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        from edgekit.runtimes import run_all
        from edgekit.runtimes.onnxruntime_web import NodeOrtWebRunner

        runner = NodeOrtWebRunner(artifact.path, 1)
        try:
            return run_all(runner, np.asarray(inputs, np.float32))
        finally:
            runner.close()


class ChromiumDevice(_EngineDevice):
    """Headless Chromium opening the bundle's page (a fresh profile, served from 127.0.0.1)."""

    scheme = engine = "chromium"

    def _tflite(self, job: Job, x: np.ndarray, warmup: int, runs: int, threads: int) -> Latency:
        return _measure_tflite(job.path, x, warmup, runs, threads)[1]

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        """One page per input batch (each page posts its output back)."""
        x = np.asarray(inputs, np.float32)
        outs = [np.asarray(_time_bundle_in_chromium(artifact.path, x[i:i + 1], 0, 1, 1)["output"], np.float32)
                for i in range(len(x))]
        return np.stack([o.ravel() for o in outs])
