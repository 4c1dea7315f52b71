"""Sparse TFLite vs dense TFLite of the same masked torchvision mobilenet_v2 (224x224), 70/80/90% of 1x1-conv weights
zero (one-shot magnitude pruning, BatchNorm statistics set from random inputs so outputs are not vanishingly small).

Measures: file sizes; output difference (sparse vs dense in LiteRT, and vs torch); host latency with LiteRT/XNNPACK,
1 and 2 threads, interleaved, p50 over >= 50 runs (expected ~1: XNNPACK keeps the dense path on AVX x86, which is
what `edgekit check` predicts); browser latency in headless Chromium with the TFLite WebAssembly runtime of
@tensorflow/tfjs-tflite (XNNPACK, WASM SIMD); and, with --emulate, the sparse/dense time ratio under qemu-x86_64
emulating an SSE-only CPU (Nehalem), where XNNPACK does take its sparse path: evidence the rules hold, not a latency.

With --device ssh://user@host (an ARM board, the harness of edgekit.devices.ssh), the same pair is
timed there too (device_speedup_*): the sparse path's real target.

Usage: .venv/bin/python benchmarks/sparse_speedup.py [--runs 50] [--sparsities 0.7,0.8,0.9] [--emulate]
       [--device ssh://pi@raspberrypi]
Prints one JSON object per sparsity, and a summary JSON object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

QEMU_SCRIPT = """
import sys, time, numpy as np
from ai_edge_litert.interpreter import Interpreter
x = np.load(sys.argv[1])
out = []
for p in sys.argv[2:]:
    it = Interpreter(model_path=p, num_threads=1); it.allocate_tensors()
    i = it.get_input_details()[0]["index"]; it.set_tensor(i, x); it.invoke()
    ts = []
    for _ in range(2):
        t = time.perf_counter(); it.invoke(); ts.append(time.perf_counter() - t)
    out.append(min(ts))
print(out[0] / out[1])
"""


def build(sparsity: float, base, x: np.ndarray, d: Path) -> tuple[Path, Path, dict, float]:
    import torch

    from edgekit.export import tflite, tflite_sparse
    from edgekit.stages.sparsify import candidate_convs, magnitude_prune

    model = copy.deepcopy(base)
    magnitude_prune(candidate_convs(model), sparsity)
    dense = tflite.export(model, x, d / f"dense_{int(sparsity * 100)}.tflite")
    sparse = d / f"sparse_{int(sparsity * 100)}.tflite"
    info = tflite_sparse.rewrite(dense, sparse)
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).numpy()
    return dense, sparse, info, float(np.abs(ref).max())


def emulated_ratio(dense: Path, sparse: Path, x: np.ndarray, d: Path) -> float | None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        return None
    np.save(d / "x.npy", x)
    script = d / "q.py"
    script.write_text(QEMU_SCRIPT)
    r = subprocess.run([qemu, "-cpu", "Nehalem", sys.executable, str(script), str(d / "x.npy"), str(dense),
                        str(sparse)], capture_output=True, text=True, timeout=1200)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def device_times(device: str, dense: Path, sparse: Path, runs: int, warmup: int) -> dict:
    """dense and sparse timed on the device, alternating three times (p50 of each call, median over calls)."""
    from edgekit.devices import Job, open_device

    try:
        p50 = {"dense": [], "sparse": []}
        with open_device(device) as dev:
            for _ in range(3):
                for kind, path in (("dense", dense), ("sparse", sparse)):
                    (lat,) = dev.time([Job(path, "litert")], runs, warmup=warmup, threads=1)
                    if lat.source != "measured":
                        raise RuntimeError(lat.reason)
                    p50[kind].append(lat.p50_ms)
        d, s = float(np.median(p50["dense"])), float(np.median(p50["sparse"]))
        return {"device": device, "device_dense_p50_ms": d, "device_sparse_p50_ms": s, "device_speedup": d / s}
    except Exception as e:  # report why, never a number
        return {"device": device, "device_speedup": None, "device_reason": str(e)[:300]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sparsities", default="0.7,0.8,0.9")
    ap.add_argument("--emulate", action="store_true", help="also run the 90%% pair under qemu (SSE-only CPU)")
    ap.add_argument("--device", default=None, help="also time on this device (ssh://user@host), 1 thread")
    args = ap.parse_args()

    import torch
    import torchvision

    from edgekit import rules
    from edgekit.devices.timing import time_interleaved
    from edgekit.runtimes import load_runner
    from edgekit.targets import load_target
    from edgekit.zoo import calibrate_batchnorm

    torch.manual_seed(0)
    base = torchvision.models.mobilenet_v2().eval()
    rng = np.random.default_rng(0)
    calibrate_batchnorm(base, rng.standard_normal((32, 3, 224, 224), dtype=np.float32))
    x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="sparse-bench-") as tmp:
        d = Path(tmp)
        for s in (float(v) for v in args.sparsities.split(",")):
            key = int(round(s * 100))
            dense, sparse, info, ref_scale = build(s, base, x, d)
            row = {"sparsity": s, "size_dense_bytes": info["size_dense_bytes"],
                   "size_sparse_bytes": info["size_sparse_bytes"],
                   "size_ratio": info["size_sparse_bytes"] / info["size_dense_bytes"],
                   "sparse_filters": info["sparse_filters"], "max_abs_ref": ref_scale}
            for threads in (1, 2):
                a, b = load_runner("litert", dense, threads), load_runner("litert", sparse, threads)
                if threads == 1:
                    row["max_abs_err"] = float(np.abs(np.asarray(a(x)) - np.asarray(b(x))).max())
                ta, tb = time_interleaved([a, b], x, args.warmup, args.runs)
                row[f"host_dense_p50_ms_{threads}t"] = round(ta.p50_ms, 3)
                row[f"host_sparse_p50_ms_{threads}t"] = round(tb.p50_ms, 3)
                row[f"host_speedup_{threads}t"] = round(ta.p50_ms / tb.p50_ms, 3)
            try:
                from edgekit.devices.tflite_web import time_tflite_in_chromium

                w = time_tflite_in_chromium([dense, sparse], x, args.warmup, args.runs, threads=1)
                p50 = [float(np.percentile(v, 50)) for v in w["samples_ms"]]
                row.update(wasm_dense_p50_ms=round(p50[0], 3), wasm_sparse_p50_ms=round(p50[1], 3),
                           wasm_speedup=round(p50[0] / p50[1], 3), wasm_runs=len(w["samples_ms"][0]),
                           wasm_max_abs_err=float(np.abs(np.subtract(*w["outputs"])).max()),
                           wasm_runtime=w["runtime"], wasm_browser=w["chromium"])
            except Exception as e:  # report why, never a number
                row.update(wasm_speedup=None, wasm_reason=str(e)[:300])
            if args.device:
                row.update(device_times(args.device, dense, sparse, args.runs, args.warmup))
            verdicts = {t: rules.check_graph(rules.read_tflite(sparse), load_target(t))[0] for t in ("host", "rpi4")}
            row["check_host_sparse"] = verdicts["host"].sparse
            row["check_rpi4_sparse"] = verdicts["rpi4"].sparse
            row["check_rules_met"] = verdicts["rpi4"].sparse and all(
                b["layer"] == "CPU" for b in verdicts["host"].blockers)
            row["check_summary"] = verdicts["host"].summary
            if args.emulate and key == 90:
                row["emulated_sse_only_dense_over_sparse"] = emulated_ratio(dense, sparse, x, d)
            print(json.dumps(row), flush=True)
            summary[key] = row
    r90 = summary.get(90, {})
    print(json.dumps({
        "host_speedup_90_1t": r90.get("host_speedup_1t"), "host_speedup_90_2t": r90.get("host_speedup_2t"),
        "wasm_speedup_90": r90.get("wasm_speedup"), "wasm_reason": r90.get("wasm_reason"),
        "max_abs_err_90": r90.get("max_abs_err"), "size_dense_bytes": r90.get("size_dense_bytes"),
        "size_sparse_90_bytes": r90.get("size_sparse_bytes"), "size_ratio_90": r90.get("size_ratio"),
        "check_predicts_host_sparse": r90.get("check_host_sparse"), "check_rules_met_90": r90.get("check_rules_met"),
        "emulated_sse_only_ratio_90": r90.get("emulated_sse_only_dense_over_sparse"),
        "device_speedup_90": r90.get("device_speedup"), "device_reason_90": r90.get("device_reason"),
        "wasm_speedup_by_sparsity": {k: v.get("wasm_speedup") for k, v in summary.items()},
        "host_speedup_1t_by_sparsity": {k: v.get("host_speedup_1t") for k, v in summary.items()},
        "runs": args.runs}))


if __name__ == "__main__":
    main()
