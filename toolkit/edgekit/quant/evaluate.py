"""Scores a policy: apply it through the backend, run the artifact in its own runtime, measure quality, latency, size.

Quality is the run's metric (edgekit.quality) over every output: against the labels when the data has them, else
against the float artifact's outputs (run in the same runtime); the SQNR of every output is recorded beside it. A
drop is in the metric's unit (percentage points, or dB for output fidelity).

Latency: for the host target, measured here in the artifact's runtime, interleaved with an anchor artifact (the full
INT8 model) so that a slow phase of a shared machine hits both; the search objective is the candidate's p50 scaled by
the anchor's p50 ratio (less noisy than raw p50s taken minutes apart). On a device (--device URI, or a farm of
them), each candidate is timed interleaved with the anchor in one session on whichever device runs it, and the same
ratio times the anchor's p50 (timed once) is its objective: boards of one model that differ a little in speed, or
a slow phase of one of them, cancel out. For another target without a device, predicted from the target's profile
when one exists, else unavailable: host timings are never reported as another device's latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit import child, heap
from edgekit.devices.timing import paired_timing, time_interleaved
from edgekit.errors import EdgekitError
from edgekit.quant.policy import Layer, Policy
from edgekit.runtimes import Runner, fit_input, load_runner, run_outputs
from edgekit.train import top1_agreement


class Backend(Protocol):
    layers: list[Layer]

    def apply(self, policy: Policy, out_path: str | Path) -> Path: ...


def apply_policy(backend: Backend, policy: Policy, out_path: Path) -> Path:
    """`backend.apply`, for big weights in a child process when the backend keeps nothing between candidates
    (`APPLY_IN_CHILD`): the quantiser's and the converter's memory leave with the child (edgekit.child)."""
    if not getattr(backend, "APPLY_IN_CHILD", False):
        return backend.apply(policy, out_path)
    model, float_path = getattr(backend, "model", None), getattr(backend, "float_path", None)
    if hasattr(model, "parameters"):  # the torch backends
        isolated = child.for_model(model)
    else:  # the file backends (NNCF holds an onnx proto as its model)
        isolated = child.for_size(Path(float_path).stat().st_size if float_path is not None else 0)
    return isolated(f"quantising {Path(out_path).name}", backend.apply, policy, out_path)


@dataclass
class Candidate:
    """One evaluated policy."""

    policy: Policy
    path: Path
    quality: float  # the metric's value (0..1 for a percentage, dB for fidelity)
    drop: float  # below the float artifact, in the metric's unit
    sqnr_db: float  # of every output against the float artifact's (the worst output)
    agreement: float | None  # top-1 agreement with the float artifact, for a class-vector output
    size_bytes: int
    p50_ms: float | None = None  # search objective (anchor-scaled when measured)
    p50_raw_ms: float | None = None  # as timed, interleaved with the anchor
    latency_source: str = "none"
    trial: int = -1
    drop_se: float = 0.0  # standard error of `drop` (points, paired against the float artifact)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    @property
    def label(self) -> str:
        return self.policy.label

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.policy.label, "policy": self.policy.describe(), "quality": round(self.quality, 5),
                "drop": round(self.drop, 3), "drop_se": round(self.drop_se, 3), "sqnr_db": round(self.sqnr_db, 2),
                "agreement": None if self.agreement is None else round(self.agreement, 5),
                "size_bytes": self.size_bytes, "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 4),
                "latency_source": self.latency_source, "trial": self.trial}


class Scorer:
    """Evaluates policies for one backend against the float artifact of the same runtime.

    Args:
        backend: applies policies (OnnxQuantizer, TFLiteQuantizer, NncfQuantizer ...).
        runtime: runtime module that runs the backend's artifacts.
        float_path: the float artifact in that runtime.
        x_eval, y_eval: held-out inputs (never the calibration inputs) and labels or None.
        workdir: where candidate artifacts are written.
        threads: runtime threads.
        latency: "measured" (host target), "predicted" (predictor given) or "none".
        predictor: an edgekit.latency.predictor Predictor for "predicted".
        timing_runs: interleaved rounds per candidate.
        device: an edgekit.devices Device that times candidates ("measured" on a device or farm); None: this
            process (the host target).
        metric: the run's quality metric (edgekit.quality); default: classification (accuracy with labels, else
            top-1 agreement).
    """

    def __init__(self, backend: Backend, runtime: str, float_path: Path, x_eval: np.ndarray,
                 y_eval: np.ndarray | None, workdir: Path, threads: int = 1, latency: str = "measured",
                 predictor: Any = None, timing_runs: int = 20, suffix: str = ".onnx", device: Any = None,
                 metric: Any = None) -> None:
        from edgekit.quality import choose

        self.backend = backend
        self.runtime = runtime
        self.float_path = Path(float_path)
        self.quality_metric = metric if metric is not None else choose("classify", None, y_eval)[0]
        self.x = x_eval.astype(np.float32)
        self.y = y_eval
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.latency = latency
        self.predictor = predictor
        self.timing_runs = timing_runs
        self.suffix = suffix
        self.device = device
        self.anchor_path: Path | None = None
        self._float_runner: Runner | None = load_runner(runtime, float_path, threads)
        self.float_outputs = run_outputs(self._float_runner, self.x)
        self.runtime_name = self._float_runner.runtime
        self._float_runner = None  # loaded again when timing needs it: a float session is the weights once more
        self.y = None if y_eval is None else y_eval[: len(self.float_outputs[0])]
        self.float_quality = self._quality(self.float_outputs)
        self.anchor: Runner | None = None
        self.anchor_p50: float | None = None
        self.evaluated = 0
        self._cache: dict[str, Candidate] = {}

    @property
    def metric(self) -> str:
        return self.quality_metric.name

    @property
    def float_logits(self) -> np.ndarray:
        """The float artifact's first output, one row per input."""
        first = self.float_outputs[0]
        return first.reshape(len(first), -1)

    def _quality(self, outputs: list[np.ndarray]) -> float:
        return float(self.quality_metric.score(outputs, self.y if self.quality_metric.labelled else None,
                                               self.float_outputs))

    def _candidate(self, policy: Policy, path: Path, outputs: list[np.ndarray]) -> Candidate:
        """A candidate's figures against the float artifact: quality, drop and its paired error, SQNR, agreement."""
        from edgekit.quality import class_vector, drop, drop_se
        from edgekit.quality.fidelity import sqnr_db

        q = self._quality(outputs)
        labels = self.y if self.quality_metric.labelled else None
        agreement = (top1_agreement(outputs[0], self.float_outputs[0])
                     if class_vector(self.float_outputs[0].shape) else None)
        return Candidate(policy=policy, path=Path(path), quality=q, drop=drop(self.quality_metric, self.float_quality,
                                                                               q),
                         sqnr_db=min(sqnr_db(r, o) for o, r in zip(outputs, self.float_outputs, strict=False)),
                         agreement=agreement, size_bytes=Path(path).stat().st_size,
                         drop_se=drop_se(self.quality_metric, outputs, self.float_outputs, labels, self.float_outputs))

    def set_anchor(self, path: Path, runs: int = 60) -> float | None:
        """Times the anchor (full INT8) against the float artifact; candidates are scaled by it."""
        if self.latency != "measured":
            return None
        self.anchor_path = Path(path)
        if self.device is not None:
            lat = self.device.time([self._job(path), self._job(self.float_path)], runs, warmup=5,
                                   threads=self.threads)[0]
            if lat.source != "measured":
                raise EdgekitError(f"the search's anchor could not be timed on {self.device.uri}: {lat.reason}")
            self.anchor_p50 = lat.p50_ms
            return self.anchor_p50
        self.anchor = load_runner(self.runtime, path, self.threads)
        t = time_interleaved([self.anchor, self.float_runner], fit_input(self.anchor, self.x[:1]), 5, runs)
        self._float_runner = None  # the candidates are timed against the anchor
        self.anchor_p50 = t[0].p50_ms
        return self.anchor_p50

    @property
    def float_runner(self) -> Runner:
        """The float artifact in its runtime, loaded when timing or the noise floor needs it."""
        if self._float_runner is None:
            self._float_runner = load_runner(self.runtime, self.float_path, self.threads)
        return self._float_runner

    def use_anchor(self, path: Path, p50_ms: float | None) -> None:
        """Takes an anchor another process timed (a worker of a shared search scales by the same figure)."""
        if self.latency != "measured":
            return
        self.anchor_path, self.anchor_p50 = Path(path), p50_ms
        if self.device is None:
            self.anchor = load_runner(self.runtime, path, self.threads)

    def _job(self, path: Path) -> Any:
        from edgekit.devices import Job

        return Job(Path(path), self.runtime, input=self.x[:1])

    def score(self, policy: Policy, name: str, time_it: bool = True) -> Candidate:
        """Applies, runs and times `policy`; identical policies are evaluated once."""
        key = policy.key()
        if key in self._cache:
            cand = self._cache[key]
            if time_it and cand.p50_ms is None and self.latency != "none":
                if not cand.path.is_file():  # the sensitivity pass drops its files; scored already, made again
                    apply_policy(self.backend, policy, cand.path)
                self._time(cand, load_runner(self.runtime, cand.path, self.threads), cand.path)
            return cand
        heap.trim(collect=False)  # the last candidate's runtime is released: its buffers go back to the system
        path = apply_policy(self.backend, policy, self.workdir / f"{name}{self.suffix}")
        runner = load_runner(self.runtime, path, self.threads)
        cand = self._candidate(policy, path, run_outputs(runner, self.x))
        if time_it:
            self._time(cand, runner, path)
        self.evaluated += 1
        self._cache[key] = cand
        return cand

    def _time_on_device(self, cand: Candidate, path: Path) -> None:
        _time_on_device_impl(self, cand, path)

    def proxy(self, policy: Policy, name: str, n: int) -> Candidate:
        """A cheap look at a policy for the sensitivity pass: scored on the first `n` scoring inputs only, never
        timed nor cached (a search candidate is always scored on all of them); its file is removed."""
        heap.trim(collect=False)
        path = apply_policy(self.backend, policy, self.workdir / f"{name}{self.suffix}")
        try:
            full_x, full_out, full_y, full_q = self.x, self.float_outputs, self.y, self.float_quality
            self.x, self.float_outputs = self.x[:n], [o[:n] for o in self.float_outputs]
            self.y = None if self.y is None else self.y[:n]
            self.float_quality = self._quality(self.float_outputs)
            return self._candidate(policy, path, run_outputs(load_runner(self.runtime, path, self.threads), self.x))
        finally:
            self.x, self.float_outputs, self.y, self.float_quality = full_x, full_out, full_y, full_q
            path.unlink(missing_ok=True)

    def noise_floor(self, snr_db: float = 40.0, seed: int = 3) -> float | None:
        """Quality drop (points) of the FLOAT artifact when its input gets Gaussian noise at `snr_db` (about the
        SQNR of one INT8 tensor): how much drop this model's own sensitivity explains, before any quantisation."""
        if not isinstance(self.x, np.ndarray):
            return None  # several inputs: no single input to add noise to
        rng = np.random.default_rng(seed)
        rms = float(np.sqrt(np.mean(self.x.astype(np.float64) ** 2))) or 1.0
        noisy = self.x + rng.standard_normal(self.x.shape).astype(np.float32) * rms * 10 ** (-snr_db / 20)
        from edgekit.quality import drop

        quality = self._quality(run_outputs(self.float_runner, noisy))
        self._float_runner = None
        return drop(self.quality_metric, self.float_quality, quality)

    def score_file(self, path: Path, label: str) -> Candidate:
        """Scores an artifact made outside the policy space (e.g. NNCF's default INT8) like any candidate."""
        runner = load_runner(self.runtime, path, self.threads)
        cand = self._candidate(Policy(label=label), Path(path), run_outputs(runner, self.x))
        self._time(cand, runner, Path(path))
        return cand

    def _time(self, cand: Candidate, runner: Runner, path: Path) -> None:
        if self.latency == "measured" and self.device is not None:
            self._time_on_device(cand, path)
        elif self.latency == "measured":
            anchor = self.anchor or self.float_runner
            x = fit_input(runner, self.x[:1])
            raw, ratio = paired_timing(runner, anchor, x, self.timing_runs)
            cand.p50_raw_ms = raw
            cand.p50_ms = raw if self.anchor_p50 is None else self.anchor_p50 * ratio
            cand.latency_source = "measured"
            cand.extra["ratio_to_anchor"] = ratio
        elif self.latency == "predicted" and self.predictor is not None:
            try:
                pred = self.predictor.predict(path, self.runtime, self.threads)
            except EdgekitError as e:  # the profile cannot cover this artifact: no figure rather than a guess
                cand.extra["latency_reason"] = str(e)
                return
            cand.p50_ms = float(pred["p50_ms"])
            cand.latency_source = "predicted"
            cand.extra["predicted_error_pct"] = pred.get("error_pct")


def _time_on_device_impl(scorer: Scorer, cand: Candidate, path: Path) -> None:
    """The candidate and the anchor interleaved in one session on the device (or a farm's device)."""
    anchor = scorer.anchor_path or scorer.float_path
    lat, ref = scorer.device.time([scorer._job(path), scorer._job(anchor)], scorer.timing_runs, warmup=3,
                                  threads=scorer.threads)
    if lat.source != "measured" or ref.source != "measured":
        cand.extra["latency_reason"] = lat.reason or ref.reason
        return
    ratio = lat.p50_ms / ref.p50_ms
    cand.p50_raw_ms = lat.p50_ms
    cand.p50_ms = lat.p50_ms if scorer.anchor_p50 is None else scorer.anchor_p50 * ratio
    cand.latency_source = "measured"
    cand.extra.update(ratio_to_anchor=ratio, device=lat.via, device_id=lat.device_id)
    if lat.extra.get("farm"):
        cand.extra["farm_device"] = lat.extra["farm"]["device"]
