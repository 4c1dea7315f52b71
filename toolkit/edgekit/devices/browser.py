"""`node` and `chromium`: the browser target's devices, real JavaScript engines on this machine running
onnxruntime-web (and, in Chromium, the TFLite WebAssembly runtime for .tflite files). How each engine is driven:
edgekit.measure.browser and edgekit.measure.tflite_web."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.devices import BaseDevice, Job
from edgekit.errors import SettingsError

if TYPE_CHECKING:
    from edgekit.report import Latency
    from edgekit.targets import Target


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
                from edgekit.measure.browser import measure_artifact

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
        from edgekit.measure.tflite_web import runtime_name
        from edgekit.report import Latency

        return Latency.none("no TFLite runtime for Node is measured by edgekit", engine="node",
                            runtime=runtime_name())

    def _provenance(self, lat: Latency) -> None:
        from edgekit.measure.profile import device_id_from_facts

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
        from edgekit.quant.evaluate import run_all
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
        from edgekit.measure.browser import _measure_tflite

        return _measure_tflite(job.path, x, warmup, runs, threads)[1]

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        """One page per input batch (each page posts its output back)."""
        from edgekit.measure.browser import _time_bundle_in_chromium

        x = np.asarray(inputs, np.float32)
        outs = [np.asarray(_time_bundle_in_chromium(artifact.path, x[i:i + 1], 0, 1, 1)["output"], np.float32)
                for i in range(len(x))]
        return np.stack([o.ravel() for o in outs])
