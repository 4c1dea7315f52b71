"""The browser runtime against native ONNX Runtime: p50 latency of the same ONNX model in onnxruntime-web (WebAssembly,
SIMD128, one thread) under Node and headless Chromium, and in onnxruntime (native, one thread) on this machine.

Models: the built-in digits CNN (trained, cached) and torchvision mobilenet_v2 (seed-0 weights, 1x3x224x224). Each
engine times `--runs` inferences after warm-up (WebAssembly: >= 1 s and >= `--warmup` runs, see docs/browser.md);
the rounds are repeated `--rounds` times, alternating the engines, and the median of the per-round p50s is kept, so a
slow phase of the shared machine hits every engine alike. Prints one JSON line per model and round, last one object:
    cnn_native_p50_ms, cnn_node_p50_ms, cnn_chromium_p50_ms, mnv2_native_p50_ms, mnv2_node_p50_ms,
    mnv2_chromium_p50_ms, mnv2_node_over_native, mnv2_chromium_over_native, versions

    .venv/bin/python benchmarks/wasm_runtimes.py [--runs 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torchvision

    from edgekit import zoo
    from edgekit.devices import browser
    from edgekit.devices.timing import time_interleaved
    from edgekit.export import onnx as onnx_export
    from edgekit.runtimes import load_runner
    from edgekit.runtimes._web_bundle import write_bundle

    tmp = Path(tempfile.mkdtemp(prefix="edgekit-bench-wasm-"))
    torch.manual_seed(0)
    models = {"cnn": (zoo.load_model("edgekit:digits_cnn").module.eval(), (1, 1, 8, 8)),
              "mnv2": (torchvision.models.mobilenet_v2().eval(), (1, 3, 224, 224))}
    summary: dict[str, object] = {}
    for name, (model, shape) in models.items():
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        onnx_file = onnx_export.export(model, x, tmp / f"{name}.onnx")
        bundle = write_bundle(onnx_file, tmp / f"{name}_web")
        p50s: dict[str, list[float]] = {"native": [], "node": [], "chromium": []}
        for r in range(args.rounds):
            native = load_runner("onnxruntime", onnx_file, 1)
            p50s["native"].append(time_interleaved([native], x, args.warmup, args.runs)[0].p50_ms)
            node = browser.time_in_node(bundle, x, args.warmup, args.runs)
            p50s["node"].append(float(np.median(node["samples_ms"])))
            chrome = browser.time_in_chromium(bundle, x, args.warmup, args.runs)
            p50s["chromium"].append(float(np.median(chrome["samples_ms"])))
            print(json.dumps({"model": name, "round": r, **{k: round(v[-1], 4) for k, v in p50s.items()}}),
                  flush=True)
            summary["versions"] = {"onnxruntime_web": node["versions"]["onnxruntime_web"],
                                   "node": node["versions"]["node"], "chromium": chrome["chromium"],
                                   "onnxruntime": native.runtime}
        for k, v in p50s.items():
            summary[f"{name}_{k}_p50_ms"] = round(statistics.median(v), 4)
    for k in ("node", "chromium"):
        summary[f"mnv2_{k}_over_native"] = round(summary[f"mnv2_{k}_p50_ms"] / summary["mnv2_native_p50_ms"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
