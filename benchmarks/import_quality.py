"""Import quality on PP-OCR's text-direction classifier (issue 12): torch speed of the imported model and the
TRANSPOSEs in its TFLite export, before and after the import pass's torch-side rewrites, side by side in one process.

before: `import_onnx(..., standard=False)` (the module as onnx2torch writes it, static shapes baked) wrapped to run
one sample at a time, as edgekit imported ONNX files until now. after: `edgekit.zoo.load_model` as it is (standard
torch ops, whole batches where the batch check agrees).

- torch: one `edgekit.train.predict` over 450 rendered text lines, interleaved rounds, at the default torch threads
  and at 1 thread; accuracy of both and of ONNX Runtime on the original file on the same lines;
- TFLite: the float export of each (edgekit.export.tflite), its op counts (TRANSPOSE) against torchvision's
  mobilenet_v3_small export, its outputs against ONNX Runtime on the original file, and p50 latency in LiteRT
  (XNNPACK, 1 thread) timed interleaved in one process;
- the batch change alone must not change exports: the ONNX export of the imported model with its Reshape targets
  batch-symbolic and with them fixed at 1 is compared node by node and weight by weight.

Usage: .venv/bin/python benchmarks/import_quality.py [--runs 300] [--rounds 3]
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toolkit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CLS_SHAPE, ppocr_cls_onnx, text_lines  # noqa: E402


def _ops(path: Path) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    return dict(collections.Counter(o["op_name"] for o in Interpreter(model_path=str(path))._get_ops_details()))


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _torch_speed(models: dict[str, object], x: np.ndarray, rounds: int, threads: int | None) -> dict[str, float]:
    import torch

    from edgekit.train import predict

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    seconds: dict[str, list[float]] = {k: [] for k in models}
    try:
        for _ in range(rounds):
            for name, m in models.items():
                t0 = time.perf_counter()
                predict(m, x)
                seconds[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)
    return {k: round(float(np.median(v)), 3) for k, v in seconds.items()}


def _onnx_export_same(module: object, x: np.ndarray, work: Path) -> bool:
    """The ONNX export with batch-symbolic Reshape targets equals the one with targets fixed at batch 1."""
    import onnx
    from onnx import numpy_helper

    from edgekit.export import onnx as onnx_export

    reshapes = [m for m in module.modules() if getattr(m, "batch_leading", False)]
    graphs = []
    for leading in (True, False):
        for m in reshapes:
            m.batch_leading = leading
        p = onnx_export.export(module, x, work / f"batch_{leading}.onnx")
        g = onnx.load(str(p)).graph
        graphs.append(([(n.op_type, list(n.input), list(n.output), str(n.attribute)) for n in g.node],
                       {t.name: numpy_helper.to_array(t).tobytes() for t in g.initializer}))
    for m in reshapes:
        m.batch_leading = True
    return bool(reshapes) and graphs[0] == graphs[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300, help="interleaved LiteRT timing rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved torch prediction rounds")
    args = ap.parse_args()

    import torch
    import torchvision

    from edgekit.devices.timing import time_interleaved
    from edgekit.export import tflite as tflite_export
    from edgekit.importers import check_import
    from edgekit.importers.onnx import import_onnx
    from edgekit.runtimes.litert import LiteRTRunner
    from edgekit.zoo import _per_sample, load_model

    path = ppocr_cls_onnx()
    x, y = text_lines(450, seed=1000)
    before = _per_sample(import_onnx(path, CLS_SHAPE, standard=False).module)
    bundle = load_model(str(path), None, CLS_SHAPE)
    after = bundle.module
    check = check_import(bundle, x[:64], "64 text lines")
    ref = _ort(path, x)
    from edgekit.train import predict

    acc = {"ort_original": float((ref.argmax(1) == y).mean()),
           "torch_before": float((predict(before, x).argmax(1) == y).mean()),
           "torch_after": float((predict(after, x).argmax(1) == y).mean())}
    speed = {"default_threads": _torch_speed({"before": before, "after": after}, x, args.rounds, None),
             "one_thread": _torch_speed({"before": before, "after": after}, x, args.rounds, 1)}
    for v in speed.values():
        v["ratio"] = round(v["before"] / v["after"], 2)
    print(json.dumps({"torch_predict_450_inputs_s": speed, "accuracy": acc}), flush=True)

    with tempfile.TemporaryDirectory(prefix="edgekit-iq-") as d:
        work = Path(d)
        one = np.ascontiguousarray(x[:1])
        files = {k: tflite_export.export(m, one, work / f"{k}.tflite") for k, m in (("before", before),
                                                                                    ("after", after))}
        torch.manual_seed(0)
        mnv3 = tflite_export.export(torchvision.models.mobilenet_v3_small().eval(),
                                    np.zeros((1, 3, 224, 224), np.float32), work / "mnv3.tflite")
        ops = {k: _ops(p) for k, p in files.items()}
        ops["mnv3"] = _ops(mnv3)
        runners = [LiteRTRunner(files[k], 1) for k in ("before", "after")]
        errs = {k: float(np.abs(np.concatenate([r(x[i:i + 1]) for i in range(64)]) - ref[:64]).max())
                for k, r in zip(("before", "after"), runners, strict=True)}
        timings = time_interleaved(runners, one, warmup=20, runs=args.runs)
        same = _onnx_export_same(after, one, work)
    p50 = {k: round(t.p50_ms, 4) for k, t in zip(("before", "after"), timings, strict=True)}
    result = {
        "model": path.name, "import_passes": [p["pass"] for p in bundle.import_info["passes"]],
        "batch": bundle.import_info["batch"], "check": {k: check[k] for k in ("max_abs_err", "tolerance",
                                                                                 "top1_agreement", "passed")},
        "accuracy_450_lines": acc, "torch_predict_450_inputs_s": speed,
        "tflite_transposes": {"before": ops["before"].get("TRANSPOSE", 0), "after": ops["after"].get("TRANSPOSE", 0),
                              "torchvision_mobilenet_v3_small": ops["mnv3"].get("TRANSPOSE", 0)},
        "tflite_ops_after": ops["after"], "tflite_max_abs_err_vs_ort_64": errs,
        "tflite_p50_ms_1_thread": {**p50, "runs": args.runs, "speedup": round(p50["before"] / p50["after"], 3)},
        "onnx_export_unchanged_by_batch_symbolic": same,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
