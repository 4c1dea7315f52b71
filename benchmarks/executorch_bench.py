"""ExecuTorch (XNNPACK delegate) against ONNX Runtime and LiteRT: mobilenet_v2 at 224, 1 thread, p50, interleaved.

All five artifacts of one model are timed in one process, one run of each per round (ONNX Runtime with
session.intra_op.allow_spinning=0, as edgekit's runner sets it), so a slow phase of the shared machine hits them alike:
    ExecuTorch FP32 and INT8 (PT2E, XNNPACKQuantizer, per-channel), ONNX Runtime FP32 and INT8 (QDQ, per-channel,
    onnxruntime.quantization through edgekit's backend), LiteRT FP32 (XNNPACK).
Then: ExecuTorch FP32's max |error| against torch, the delegated fraction, the per-operator profile (ETDump) of both
ExecuTorch programs, and the latency predictor checked per layer: a predictor built from the ETDump profiles of
FP32, INT8 and `--train` random per-layer INT8/FP32 policies predicts `--variants` other random policies, layer by
layer, against their own measured profiles.

mobilenet_v2 has torchvision's seed-0 initialisation with BatchNorm statistics set from synthetic inputs (no weights
can be downloaded here); inputs are standard-normal images. Latencies are this machine's (host), never a device's.

    .venv/bin/python benchmarks/executorch_bench.py [--runs 200] [--train 4] [--variants 3]

Prints JSON lines; the last one holds et_fp32_p50_ms, et_int8_p50_ms, ort_fp32_p50_ms, ort_int8_p50_ms,
tflite_fp32_p50_ms, et_int8_vs_best_fp32, et_fp32_max_abs_err, delegated_fraction, profiled_ops (and more).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def build(tmp: Path, calib: np.ndarray, x: np.ndarray) -> tuple[Any, dict[str, Path]]:
    import torch
    import torchvision

    from edgekit.export import onnx as onnx_export
    from edgekit.export import pte
    from edgekit.export import tflite as tflite_export
    from edgekit.quant.onnx_backend import OnnxQuantizer
    from edgekit.quant.policy import INT8_CHANNEL, Policy
    from edgekit.zoo import calibrate_batchnorm

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    calibrate_batchnorm(model, calib)
    paths: dict[str, Path] = {}
    for name, fn in (("et_fp32", lambda p: pte.export(model, x, p)),
                     ("et_int8", lambda p: pte.export(model, x, p, calibration=calib)),
                     ("ort_fp32", lambda p: onnx_export.export(model, x, p)),
                     ("tflite_fp32", lambda p: tflite_export.export(model, x, p))):
        t0 = time.perf_counter()
        suffix = {"et": ".pte", "ort": ".onnx", "tflite": ".tflite"}[name.split("_")[0]]
        paths[name] = fn(tmp / f"{name}{suffix}")
        emit({"built": name, "seconds": round(time.perf_counter() - t0, 1)})
    quant = OnnxQuantizer(paths["ort_fp32"], calib, tmp / "ortq")
    paths["ort_int8"] = quant.apply(Policy.uniform(quant.layers, INT8_CHANNEL), tmp / "ort_int8.onnx")
    return model, paths


def time_all(paths: dict[str, Path], x: np.ndarray, runs: int, warmup: int = 10) -> dict[str, Any]:
    """Interleaved rounds (one run of each artifact per round, the order rotating): p50s and per-round samples."""
    from edgekit.runtimes import load_runner

    runtime = {"et": "executorch", "ort": "onnxruntime", "tflite": "litert"}
    names = list(paths)
    runners = {n: load_runner(runtime[n.split("_")[0]], paths[n], 1) for n in names}
    for r in runners.values():
        for _ in range(warmup):
            r(x)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        for n in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            runners[n](x)
            samples[n].append((time.perf_counter() - t0) * 1e3)
    return {n: {"p50_ms": round(float(np.median(samples[n])), 4), "p90_ms": round(float(np.percentile(samples[n], 90)), 4),
                "min_ms": round(min(samples[n]), 4), "runs": runs, "runtime": runners[n].runtime,
                "samples": samples[n]} for n in names}


def predictor_check(model: Any, x: np.ndarray, calib: np.ndarray, paths: dict[str, Path], tmp: Path, train: int,
                    variants: int, runs: int) -> dict[str, Any]:
    """Predictor built from ETDump profiles of FP32, INT8 and `train` random policies; checked on `variants` others."""
    from edgekit.devices import harness
    from edgekit.devices.timing import time_interleaved
    from edgekit.latency.predictor import predictor_from_profile_dicts
    from edgekit.latency.profile import add_entry, new_profile
    from edgekit.quant.executorch_backend import ExecuTorchQuantizer
    from edgekit.quant.policy import FLOAT, INT8_CHANNEL, Policy
    from edgekit.runtimes import load_runner
    from edgekit.runtimes.executorch import per_op_profile

    # Latency does not depend on the activation ranges: min/max on 8 inputs keeps each variant's export short.
    backend = ExecuTorchQuantizer(model, x, calib[:8])
    names = [la.name for la in backend.layers]

    def variant(seed: int) -> Path:
        rng = random.Random(seed)
        keep = rng.uniform(0.1, 0.9)
        policy = Policy({n: FLOAT if rng.random() < keep else INT8_CHANNEL for n in names}, calibration="minmax",
                        label=f"seed {seed}")
        return backend.apply(policy, tmp / f"policy{seed}.pte")

    train_paths = [paths["et_fp32"], paths["et_int8"]] + [variant(s) for s in range(train)]
    test_paths = [variant(100 + s) for s in range(variants)]
    every = train_paths + test_paths
    runners = [load_runner("executorch", p, 1) for p in every]
    timing = dict(zip(every, time_interleaved(runners, x, warmup=5, runs=runs), strict=True))
    profs = {p: per_op_profile(p, x, 1, runs=20, warmup=3) for p in every}
    prof = new_profile("host", "benchmark", harness.device_facts(), "local")
    for p in train_paths:
        add_entry(prof, p.name, "pte", runners[0].runtime, 1, timing[p].as_dict(), profs[p]["per_op"],
                  sha256=p.name)
    predictor = predictor_from_profile_dicts([prof])
    rows = []
    for p in test_paths:
        check = predictor.check_layers(p, "executorch", 1, profs[p]["per_op"], timing[p].p50_ms)
        rows.append({"variant": p.name, "measured_p50_ms": round(timing[p].p50_ms, 4),
                     "predicted_p50_ms": check["predicted_p50_ms"], "model_err_pct": check["model_err_pct"],
                     "layer_median_abs_err_pct": check["median_abs_err_pct"],
                     "layer_weighted_abs_err_pct": check["weighted_abs_err_pct"],
                     "layers_compared": check["layers_compared"]})
        emit({"predictor_variant": rows[-1]})
    return {"train_entries": len(train_paths), "variants": rows,
            "layer_median_abs_err_pct": statistics.median(r["layer_median_abs_err_pct"] for r in rows),
            "model_median_abs_err_pct": statistics.median(abs(r["model_err_pct"]) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200, help="interleaved rounds for the five artifacts")
    ap.add_argument("--train", type=int, default=4, help="random policies profiled for the predictor")
    ap.add_argument("--variants", type=int, default=3, help="held-out random policies predicted per layer")
    args = ap.parse_args()

    import torch

    from edgekit.export import pte
    from edgekit.runtimes import load_runner
    from edgekit.runtimes.executorch import per_op_profile

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, 224, 224), dtype=np.float32)
    x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    held = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-bench-et-"))
    model, paths = build(tmp, calib, x)
    t = time_all(paths, x, args.runs)
    emit({"timings": {k: {f: v[f] for f in v if f != "samples"} for k, v in t.items()}})
    p50 = {k: v["p50_ms"] for k, v in t.items()}
    # The same ratio per round (best FP32 of the round / ExecuTorch INT8 of the round), median over rounds: a slow
    # phase of the shared machine cancels within a round.
    rounds = [min(t[k]["samples"][i] for k in ("et_fp32", "ort_fp32", "tflite_fp32")) / t["et_int8"]["samples"][i]
              for i in range(args.runs)]
    et = load_runner("executorch", paths["et_fp32"], 1)
    et8 = load_runner("executorch", paths["et_int8"], 1)
    with torch.no_grad():
        ref = model(torch.as_tensor(held)).numpy()
    got = np.concatenate([et(held[i:i + 1]) for i in range(len(held))])
    got8 = np.concatenate([et8(held[i:i + 1]) for i in range(len(held))])
    side32, side8 = pte.read_sidecar(paths["et_fp32"]), pte.read_sidecar(paths["et_int8"])
    prof32, prof8 = (per_op_profile(paths[k], x, 1, runs=20, warmup=3) for k in ("et_fp32", "et_int8"))
    for name, prof in (("et_fp32", prof32), ("et_int8", prof8)):
        top = sorted(prof["per_op"], key=lambda o: -o["ms"])[:5]
        emit({"profile": name, "ops": len(prof["per_op"]), "mapped": prof["mapped"],
              "sum_ms": round(sum(o["ms"] for o in prof["per_op"]), 4), "execute_ms": prof["execute_ms"],
              "top": [{k: o[k] for k in ("name", "layer", "ms")} for o in top]})
    pred = predictor_check(model, x, calib, paths, tmp, args.train, args.variants, max(50, args.runs // 4))
    best_fp32 = min(p50["et_fp32"], p50["ort_fp32"], p50["tflite_fp32"])
    emit({"et_fp32_p50_ms": p50["et_fp32"], "et_int8_p50_ms": p50["et_int8"], "ort_fp32_p50_ms": p50["ort_fp32"],
          "ort_int8_p50_ms": p50["ort_int8"], "tflite_fp32_p50_ms": p50["tflite_fp32"],
          "et_int8_vs_best_fp32": round(best_fp32 / p50["et_int8"], 3),
          "et_int8_vs_best_fp32_per_round_median": round(float(np.median(rounds)), 3),
          "et_fp32_max_abs_err": float(np.abs(got - ref).max()), "et_fp32_max_abs_ref": float(np.abs(ref).max()),
          "et_int8_top1_agreement": float(np.mean(got8.argmax(1) == ref.argmax(1))),
          "delegated_fraction": side32["delegated_fraction"], "delegated_fraction_int8": side8["delegated_fraction"],
          "profiled_ops": len(prof8["per_op"]), "profiled_ops_fp32": len(prof32["per_op"]),
          "predictor_layer_median_abs_err_pct": pred["layer_median_abs_err_pct"],
          "predictor_model_median_abs_err_pct": pred["model_median_abs_err_pct"], "runs": args.runs,
          "runtimes": {k: v["runtime"] for k, v in t.items()}})


if __name__ == "__main__":
    main()
