"""The INT8 policy search (ONNX backends) worked on by several processes sharing one Optuna study (edgekit.study).

The process that starts the search (worker 0) computes what every worker needs, once: the float model, the
calibration and evaluation inputs, the anchor (full INT8) artifact and its p50, the constraints. `write_onnx_spec`
puts them in a folder (`spec.json`, `float.onnx`, `anchor.onnx`, `data.npz`, ONNX Runtime's calibration caches);
`onnx_worker` rebuilds the backend and scorer from that folder in a fresh process (`edgekit worker SPEC`), here or on
another machine that can reach the storage. No pickles: ONNX files, an .npz of arrays and JSON.

Latency in a worker: the coordinator's device (--device URI or farm) when the search measures on one; on the host
target (timed in each worker's own process) a worker must run on the coordinator's machine, or its timings would
describe another machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import SettingsError

BACKENDS = {"onnxruntime": "edgekit.quant.onnx_backend:OnnxQuantizer",
            "nncf": "edgekit.quant.nncf_backend:NncfQuantizer"}
FACTORY = "edgekit.quant.distributed:onnx_worker"


def write_onnx_spec(folder: Path, scorer: Any, backend_name: str, calib: np.ndarray, *, calibrations: tuple[str, ...],
                    constraints: Any, use_latency: bool, trials: int, seed: int, plan: Any, target: str,
                    device: str | None, max_seconds: float | None) -> Path:
    """Writes the worker folder of one ONNX search; returns spec.json."""
    from dataclasses import asdict

    from edgekit.quality import to_spec
    from edgekit.study import write_spec
    from edgekit.targets import host_facts

    if backend_name not in BACKENDS:
        raise SettingsError(f"quantize: backend {backend_name} cannot run in worker processes ({sorted(BACKENDS)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(scorer.float_path, folder / "float.onnx")
    if scorer.anchor_path is not None:
        shutil.copyfile(scorer.anchor_path, folder / "anchor.onnx")
    y = scorer.y if scorer.y is not None else np.zeros(0, np.int64)
    np.savez(folder / "data.npz", calib=calib.astype(np.float32), x_eval=scorer.x, y_eval=y,
             labelled=np.array(scorer.y is not None))
    workdir = getattr(scorer.backend, "workdir", None)
    for cache in Path(workdir).glob("calib-*.json") if workdir else []:
        shutil.copyfile(cache, folder / cache.name)  # calibration is paid once, by the coordinator
    args = {"backend": backend_name, "runtime": scorer.runtime, "suffix": scorer.suffix, "threads": scorer.threads,
            "latency": scorer.latency, "timing_runs": scorer.timing_runs, "device": device, "target": target,
            "anchor": "anchor.onnx" if scorer.anchor_path is not None else None, "anchor_p50": scorer.anchor_p50,
            "calibrations": list(calibrations), "constraints": asdict(constraints), "use_latency": use_latency,
            "seed": seed, "trials": trials, "host": host_facts()["hostname"],
            "metric": to_spec(scorer.quality_metric)}
    return write_spec(folder, FACTORY, args, plan, trials, max_seconds)


def onnx_worker(args: dict[str, Any], folder: Path, index: int) -> tuple[Any, Any]:
    """`edgekit worker` factory: (objective, sampler) for worker `index` of an ONNX policy search."""
    import importlib

    from edgekit.quality import from_spec
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.search import make_objective, nsga_sampler
    from edgekit.search_core import Constraints

    folder = Path(folder)
    work = folder / f"worker-{index}"
    work.mkdir(parents=True, exist_ok=True)
    for cache in folder.glob("calib-*.json"):
        shutil.copyfile(cache, work / cache.name)
    data = np.load(folder / "data.npz", allow_pickle=False)
    module, _, name = BACKENDS[args["backend"]].partition(":")
    backend = getattr(importlib.import_module(module), name)(folder / "float.onnx", data["calib"], work)
    device, predictor = _latency_tools(args)
    scorer = Scorer(backend, args["runtime"], folder / "float.onnx", data["x_eval"],
                    data["y_eval"] if bool(data["labelled"]) else None, work, threads=args["threads"],
                    latency=args["latency"], predictor=predictor, timing_runs=args["timing_runs"],
                    suffix=args["suffix"], device=device,
                    metric=from_spec(args["metric"]) if args.get("metric") else None)
    if args.get("anchor"):
        scorer.use_anchor(folder / args["anchor"], args["anchor_p50"])
    sampler = nsga_sampler(args["trials"], args["seed"] + index)
    objective = make_objective(backend.layers, tuple(args["calibrations"]), Constraints(**args["constraints"]),
                               args["use_latency"], scorer.score, prefix=f"w{index}")
    return objective, sampler


def _latency_tools(args: dict[str, Any]) -> tuple[Any, Any]:
    """(device, predictor) of a worker, as the coordinator's search had them."""
    from edgekit.targets import host_facts, load_target

    if args["latency"] == "predicted":
        from edgekit.latency.predictor import find_predictor

        return None, find_predictor(args["target"])
    if args["latency"] != "measured":
        return None, None
    if args.get("device") and args["device"] != "local":
        from edgekit.devices import open_device

        return open_device(args["device"], target=load_target(args["target"])), None
    if host_facts()["hostname"] != args["host"]:
        raise SettingsError(f"this search times candidates on {args['host']} itself; a worker on "
                            f"{host_facts()['hostname']} would time another machine: start the search with a "
                            f"device or farm (--device) that every worker reaches")
    return None, None
