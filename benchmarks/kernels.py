"""Sparse kernels vs dense runtimes, per layer and end to end in a TVM-compiled mobilenet_v2.

1. Per shape (MobileNetV2 1x1 convolutions) at 70/80/90/95% zeros: edgekit's CSR SpMM vs dense torch conv2d and
   dense ONNX Runtime (1 thread each, interleaved, p50). kernel_speedup_90_min = smallest speedup over the shapes at
   90% against the faster dense peer.
2. End to end: mobilenet_v2 with 90% of every 1x1-conv weight zero (BatchNorm statistics re-estimated on random
   data so activations have realistic magnitudes), as a TVM artifact with the kernels vs the best dense FP32 peer
   (ONNX Runtime and TFLite/XNNPACK, 1 thread, interleaved).

    .venv/bin/python benchmarks/kernels.py [--trials 64] [--runs 200] [--e2e-runs 60] [--skip-e2e]

Prints JSON; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = [(96, 576, 14), (576, 96, 14), (96, 576, 28), (576, 96, 28)]  # (C_in, C_out, H=W)
SPARSITIES = [0.7, 0.8, 0.9, 0.95]


def _ort_conv(w: np.ndarray, b: np.ndarray, s: int, d: Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.runtimes.onnxruntime import OrtRunner

    co, ci = w.shape
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "conv1x1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, s, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, co, s, s])],
        [numpy_helper.from_array(w.reshape(co, ci, 1, 1), "w"), numpy_helper.from_array(b, "b")],
    )
    path = d / f"conv_{ci}_{co}_{s}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return OrtRunner(path, threads=1)


def kernel_bench(runs: int) -> dict:
    import torch

    from edgekit import kernels
    from edgekit.devices.timing import time_interleaved

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for ci, co, s in SHAPES:
            dense = rng.standard_normal((co, ci)).astype(np.float32)
            b = rng.standard_normal(co).astype(np.float32)
            x = kernels.aligned_empty((ci, s, s))
            x[:] = rng.standard_normal((ci, s, s))
            ort = _ort_conv(dense, b, s, Path(d))
            tw, tb, tx = (
                torch.from_numpy(dense.reshape(co, ci, 1, 1)),
                torch.from_numpy(b),
                torch.from_numpy(x[None]),
            )

            def torch_conv(_x, tw=tw, tb=tb, tx=tx):
                with torch.no_grad():
                    return torch.nn.functional.conv2d(tx, tw, tb)

            def ort_conv(_x, ort=ort, x=x):
                return ort(x[None])

            for sp in SPARSITIES:
                w = dense.copy()
                w[np.abs(w) <= np.quantile(np.abs(w), sp)] = 0
                row_ptr, col_idx, vals = kernels.csr(w)
                y = kernels.aligned_empty((co, s, s))
                ref = np.einsum("oi,ihw->ohw", w, x) + b[:, None, None]
                err = float(np.abs(kernels.spmm_chw(row_ptr, col_idx, vals, x, b, out=y) - ref).max())
                # raw pointers, checked once above: the timed call is the kernel plus one ctypes call
                fn, args = (
                    kernels.lib().ek_spmm_chw,
                    (
                        co,
                        ci,
                        s * s,
                        row_ptr.ctypes.data,
                        col_idx.ctypes.data,
                        vals.ctypes.data,
                        b.ctypes.data,
                        x.ctypes.data,
                        y.ctypes.data,
                        0,
                    ),
                )

                def sparse(_x, fn=fn, args=args):
                    fn(*args)

                t_sp, t_torch, t_ort = time_interleaved(
                    [sparse, torch_conv, ort_conv], x, warmup=10, runs=runs
                )
                rows.append(
                    {
                        "c_in": ci,
                        "c_out": co,
                        "hw": s,
                        "zeros": sp,
                        "sparse_p50_us": t_sp.p50_ms * 1e3,
                        "torch_p50_us": t_torch.p50_ms * 1e3,
                        "ort_p50_us": t_ort.p50_ms * 1e3,
                        "speedup_vs_torch": t_torch.p50_ms / t_sp.p50_ms,
                        "speedup_vs_ort": t_ort.p50_ms / t_sp.p50_ms,
                        "speedup_vs_best_dense": min(t_torch.p50_ms, t_ort.p50_ms) / t_sp.p50_ms,
                        "useful_gflops": 2 * len(vals) * s * s / (t_sp.p50_ms * 1e-3) / 1e9,
                        "max_abs_err": err,
                    }
                )
                print(
                    json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}),
                    flush=True,
                )
    at90 = [r["speedup_vs_best_dense"] for r in rows if r["zeros"] == 0.9]
    return {
        "isa": kernels.isa(),
        "rows": rows,
        "kernel_speedup_90_min": min(at90),
        "kernel_speedup_90_min_vs_torch": min(r["speedup_vs_torch"] for r in rows if r["zeros"] == 0.9),
        "kernel_speedup_90_min_vs_ort": min(r["speedup_vs_ort"] for r in rows if r["zeros"] == 0.9),
    }


def sparse_mobilenet_v2(zeros: float = 0.9):
    """torchvision mobilenet_v2 (seed 0), BatchNorm statistics re-estimated on random data, then `zeros` of every
    1x1 convolution's weights (smallest magnitudes, per layer) set to zero."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224))
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1):
                w = m.weight
                w[w.abs() <= w.abs().flatten().quantile(zeros)] = 0
    return model.eval()


def e2e_bench(trials: int, runs: int, tuning_dir: Path | None) -> dict:
    import torch

    from edgekit.devices.timing import time_interleaved
    from edgekit.export import onnx as onnx_export
    from edgekit.export import tflite as tflite_export
    from edgekit.export import tvm as tvm_export
    from edgekit.export.verify import verify_artifact
    from edgekit.runtimes import load_runner
    from edgekit.runtimes import tvm as tvm_runtime

    torch.set_num_threads(1)
    model = sparse_mobilenet_v2(0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    xs = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(xs)).numpy()
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t0 = time.perf_counter()
        tvm_path = tvm_export.export(model, x, d / "mnv2.tvm.so", tune_trials=trials, tuning_dir=tuning_dir)
        out["tvm_export_seconds"] = round(time.perf_counter() - t0, 1)
        meta = json.loads(tvm_export.sidecar(tvm_path).read_text())
        out["tvm_tuning_seconds"] = meta["tuning"]["seconds"]
        out["tvm_tuning"] = meta["tuning"]
        out["kernel_counts"] = meta["kernel_counts"]
        onnx_path = onnx_export.export(model, x, d / "mnv2.onnx")
        tflite_path = tflite_export.export(model, x, d / "mnv2.tflite")
        rec = verify_artifact(tvm_path, "tvm", ref, xs)
        out["e2e_max_abs_err"] = rec["max_abs_err"]
        out["e2e_verified"] = rec["passed"]
        out["e2e_top1_agreement"] = rec["top1_agreement"]
        names = ["tvm", "onnxruntime", "litert"]
        runners = [
            load_runner("tvm", tvm_path, 1),
            load_runner("onnxruntime", onnx_path, 1),
            load_runner("litert", tflite_path, 1),
        ]
        timings = time_interleaved(runners, x, warmup=5, runs=runs)
        out["e2e_p50_ms"] = {n: round(t.p50_ms, 3) for n, t in zip(names, timings, strict=True)}
        best = min(timings[1:], key=lambda t: t.p50_ms)
        out["best_dense"] = names[timings.index(best)]
        out["e2e_speedup_vs_best_dense"] = best.p50_ms / timings[0].p50_ms
        out["e2e_speedup_vs"] = {
            n: round(t.p50_ms / timings[0].p50_ms, 3) for n, t in zip(names[1:], timings[1:], strict=True)
        }
        # where the TVM artifact's time goes (instrumented, so slightly slower than the timing above)
        prof = tvm_runtime.profile(runners[0], x, runs=20)
        groups: dict[str, float] = {}
        for name, v in prof.items():
            key = (
                name
                if name.startswith("edgekit_")
                else ("vm builtins" if name.startswith("vm.") else "tvm ops")
            )
            groups[key] = round(groups.get(key, 0.0) + v["ms"], 3)
        out["tvm_time_ms_by_part"] = groups
        out["tvm_profile_top"] = dict(list(prof.items())[:12])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200, help="interleaved rounds per kernel shape")
    ap.add_argument("--e2e-runs", type=int, default=60, help="interleaved rounds end to end")
    ap.add_argument(
        "--trials", type=int, default=64, help="MetaSchedule trial budget for the TVM-compiled part"
    )
    ap.add_argument(
        "--tuning-dir", type=Path, default=None, help="tuning database (default kernels/tuning/host)"
    )
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-kernels", action="store_true")
    a = ap.parse_args()
    result: dict = {"benchmark": "kernels"}
    if not a.skip_kernels:
        result.update(kernel_bench(a.runs))
    if not a.skip_e2e:
        result.update(e2e_bench(a.trials, a.e2e_runs, a.tuning_dir))
    print(json.dumps(result, default=float))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
