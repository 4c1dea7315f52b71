"""The INT8 policy search over every format of a run: ONNX first (its policy and sensitivity ranking serve the others),
then TFLite and ExecuTorch, each in its own runtime; a format that fails is reported and skipped when asked.

    results, failed = quantize_formats(job)

This is the technique's public function the quantize stage calls; it knows no run context: the stage hands it a
QuantJob (the model or none, the float file of each format, the data, the constraints, where to work and time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.deadline import OutOfTime, time_limit
from edgekit.errors import EdgekitError, first_line
from edgekit.quant.settings import Settings

if TYPE_CHECKING:
    from edgekit.search_core import Constraints
    from edgekit.targets import Target


MIN_LATER_SECONDS = 60.0  # a later format's search is never started only to be stopped at once


@dataclass
class QuantJob:
    """What every format's search shares.

    Attributes:
        model: the torch model (None on the native routes: only file backends run).
        float_file: the float artifact a format's search quantises (its reference), by format.
        example: one input batch (PT2E backends trace with it).
        probe: held-out inputs for the ExecuTorch per-layer check.
        workdir: candidates and float exports (the stage removes it afterwards).
        study: the default SQLite file of the shared study (settings.storage overrides it).
        fresh: start the study anew (--fresh) instead of resuming it.
        native: the model is a file without a torch form.
    """

    model: Any
    settings: Settings
    float_file: Callable[[str], Path]
    example: np.ndarray
    calib: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray | None
    probe: np.ndarray
    constraints: Constraints
    workdir: Path
    study: Path
    target: Target
    threads: int = 1
    device: str | None = None
    fresh: bool = False
    native: bool = False
    progress: Any = None
    metric: Any = None  # the run's quality metric (edgekit.quality); None: classification
    common: dict[str, Any] = dataclasses.field(default_factory=dict)
    onnx_result: Any = None


def latency_mode(target: Target, device: str | None) -> tuple[str, Any, Any]:
    """(measured / predicted / none, predictor, device): edgekit.devices.latency_source decides. A device is
    opened when the search measures somewhere other than in this process (a board, a phone, a farm)."""
    from edgekit.devices import latency_source, open_device

    src = latency_source(target, device, for_search=True)
    opened = open_device(src.devices[0], target=target) if src.source == "measured" and not src.local else None
    return src.source, src.predictor, opened


def quantize_formats(job: QuantJob, formats: list[str]) -> tuple[list[Any], dict[str, str]]:
    """Runs the search of each format in order; returns (SearchResults, {format: why} for the ones that failed
    when settings.skip_failing_formats)."""
    latency, predictor, device = latency_mode(job.target, job.device)
    job.common = {"threads": job.threads, "latency": latency, "predictor": predictor,
                  "timing_runs": job.settings.timing_runs, "device": device, "metric": job.metric}
    results, failed = [], {}
    start, budget = time.perf_counter(), job.settings.total_seconds
    try:
        for i, fmt in enumerate(formats):
            before = ", ".join(f.upper() for f in formats[:i])
            if budget and time.perf_counter() - start > budget:
                failed[fmt] = (f"not searched: the stage's time budget ({budget:g} s, quantize.total_seconds) went to "
                               f"{before}")
                continue
            # The first format's search bounds itself (max_seconds); a later one gets what is left of the stage's
            # budget (at least MIN_LATER_SECONDS) as a hard limit: one PT2E lowering of a mixed policy on a big
            # model can run for most of an hour (PP-OCRv4's detector at 736x992 in ExecuTorch).
            limit = None if i == 0 or not budget else max(budget - (time.perf_counter() - start), MIN_LATER_SECONDS)
            try:
                with time_limit(limit, f"the {fmt.upper()} search"):
                    results.append(SEARCHES[fmt](job))
            except OutOfTime:
                if not job.settings.skip_failing_formats:
                    raise EdgekitError(f"quantize: the {fmt.upper()} search did not finish within what {before} left "
                                       f"of the stage's time budget ({budget:g} s, quantize.total_seconds)") from None
                failed[fmt] = (f"stopped after {limit:.3g} s: not finished within what {before} left of the stage's "
                               f"time budget ({budget:g} s, quantize.total_seconds)")
            except Exception as e:  # noqa: BLE001 - one backend failing (in its own library, too) leaves the others
                if not job.settings.skip_failing_formats:
                    raise
                failed[fmt] = str(e) if isinstance(e, EdgekitError) else f"{type(e).__name__}: {first_line(e, 200)}"
    finally:
        if device is not None:
            device.close()
    return results, failed


def _plan(job: QuantJob, fmt: str, float_path: Path) -> Any:
    """The search's shared study: its storage and a name derived from everything it depends on, so a killed run
    resumes its study and a changed input starts a new one."""
    from edgekit.fileio import fingerprint, sha256_file
    from edgekit.study import StudyPlan, storage_url

    settings = job.settings
    labels = job.y_eval
    data = hashlib.sha256(job.calib.tobytes() + job.x_eval.tobytes() + (b"" if labels is None else repr(
        labels.tolist()).encode() if labels.dtype == object else labels.tobytes())).hexdigest()
    keep = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("workers", "storage")}
    name = fingerprint(fmt, sha256_file(float_path), keep, data, job.target.name, job.threads,
                       getattr(job.common["device"], "uri", None), job.common["latency"])[:16]
    return StudyPlan(storage_url(settings.storage, job.study), f"quant-{fmt}-{name}",
                     workers=settings.workers if fmt == "onnx" else 1)


def _search_onnx(job: QuantJob) -> Any:
    from edgekit.quant import nncf_backend, onnx_backend
    from edgekit.quant.driver import search_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.sensitivity import onnx_latency_shares

    settings, work = job.settings, job.workdir / "onnx"
    float_onnx = job.float_file("onnx")
    mod = nncf_backend if settings.onnx_backend == "nncf" else onnx_backend
    backend = (mod.NncfQuantizer if mod is nncf_backend else mod.OnnxQuantizer)(float_onnx, job.calib, work)
    scorer = Scorer(backend, "onnxruntime", float_onnx, job.x_eval, job.y_eval, work, **job.common)
    shares = onnx_latency_shares(backend.float_path, backend.layers, job.x_eval, work, threads=job.threads)
    plan = _plan(job, "onnx", float_onnx)
    result = search_runtime(scorer, fmt="onnx", backend_name=mod.NAME, calibrations=mod.CALIBRATIONS,
                            trials=settings.trials, constraints=job.constraints, seed=settings.seed,
                            max_seconds=settings.max_seconds, latency_slack=settings.latency_slack,
                            final_runs=settings.final_runs, shares=shares, progress=job.progress,
                            distributed=(dist := _distributed(plan, job, mod.NAME, mod.CALIBRATIONS, work)))
    result.study = {"name": plan.name, "storage": plan.storage, "workers": plan.workers,
                    "worker_exits": dist.workers if dist else []}
    if settings.nncf_baseline:
        nq = nncf_backend.NncfQuantizer(float_onnx, job.calib)
        path = nq.default_int8(work / "nncf-default.onnx")
        result.extra["NNCF default INT8"] = scorer.score_file(path, "NNCF default INT8")
    job.onnx_result = result
    return result


def tflite_backend_name(settings: Settings, native: bool) -> str:
    """auto: the LiteRT Quantizer on a model file, PT2E on a torch model."""
    if settings.tflite_backend != "auto":
        return settings.tflite_backend
    return "ai-edge-quantizer" if native else "litert-pt2e"


def _search_tflite(job: QuantJob) -> Any:
    from edgekit.quant import aeq_backend, tflite_backend
    from edgekit.quant.driver import search_runtime, transfer_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.search import Distributed
    from edgekit.quant.sensitivity import ranking

    settings, onnx_result = job.settings, job.onnx_result
    float_tfl = job.float_file("tflite")
    on_file = tflite_backend_name(settings, job.native) == aeq_backend.NAME
    if on_file:  # the LiteRT Quantizer on the float file: no torch model in the loop
        mod, backend = aeq_backend, aeq_backend.AeqQuantizer(float_tfl, job.calib)
    else:
        mod, backend = tflite_backend, tflite_backend.TFLiteQuantizer(job.model, job.example, job.calib)
    scorer = Scorer(backend, "litert", float_tfl, job.x_eval, job.y_eval, job.workdir / "tflite", suffix=".tflite",
                    **job.common)
    kw = {"fmt": "tflite", "backend_name": mod.NAME, "calibrations": mod.CALIBRATIONS,
          "constraints": job.constraints, "final_runs": settings.final_runs}
    if not (on_file or settings.tflite_trials or onnx_result is None):
        return transfer_runtime(scorer, onnx_result.chosen.policy, source="onnxruntime", **kw)
    # The ONNX search's layer names are torch module names; a .tflite file's layers are its weight tensors.
    ranked = ranking(onnx_result.sensitivity) if onnx_result and not on_file else None
    trials = settings.tflite_trials or (settings.trials if on_file else 1)
    # TFLite candidates are made in this process (a worker would need the model): one process, its study
    plan = _plan(job, "tflite", float_tfl)
    return search_runtime(scorer, trials=trials, seed=settings.seed, max_seconds=settings.max_seconds,
                          latency_slack=settings.latency_slack, ranked=ranked, progress=job.progress,
                          distributed=Distributed(plan, fresh=job.fresh) if plan.persistent else None, **kw)


def _distributed(plan: Any, job: QuantJob, backend_name: str, calibrations: tuple[str, ...], work: Path) -> Any:
    """The ONNX search's Distributed: its study, and how the other workers start (after the anchor is timed)."""
    from edgekit.quant.distributed import write_onnx_spec
    from edgekit.quant.search import Distributed
    from edgekit.study import launch_workers

    if not plan.persistent:
        return None
    settings = job.settings

    def spawn(scorer: Any, remaining: float | None) -> list[Any]:
        if plan.workers < 2:
            return []
        spec = write_onnx_spec(work / "worker", scorer, backend_name, job.calib,
                               calibrations=calibrations, constraints=job.constraints,
                               use_latency=scorer.latency != "none", trials=settings.trials, seed=settings.seed,
                               plan=plan, target=job.target.name, device=job.device, max_seconds=remaining)
        return launch_workers(spec, plan.workers - 1)

    return Distributed(plan, spawn=spawn, fresh=job.fresh)


def _search_pte(job: QuantJob) -> Any:
    from edgekit.quant import executorch_backend

    return executorch_backend.search(job, job.float_file("pte"))


# format -> search (ONNX first: TFLite and ExecuTorch reuse its policy)
SEARCHES = {"onnx": _search_onnx, "tflite": _search_tflite, "pte": _search_pte}
