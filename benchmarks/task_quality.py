"""Quality that can fail: for each task, the metric edgekit uses scores a damaged copy of a real model clearly worse
than the model as loaded, where today's flattened top-1 agreement would not notice.

    make bench-deps
    .venv/bin/python benchmarks/task_quality.py --out /tmp/task-quality     # last line: one JSON object

Models (from PyPI wheels; nothing downloaded at run time): PP-OCR's direction classifier, PP-OCRv4's detector and
recogniser (RapidOCR's wheel), YOLOv8n built from ultralytics' model YAML (random weights) and exported by its own ONNX
exporter, MediaPipe's short-range face detector (`mediapipe==0.10.14`). Inputs: rendered text lines and pages (the
DejaVu fonts matplotlib ships) for the OCR models, scikit-image's sample photographs for the detectors.

Per model: the metric `auto` picks from the output shapes and the task's own metric (text-detect, text-recognize with
the lines' strings as labels, detect against the loaded model's boxes), each for the model as loaded and for a
damaged copy (every float weight tensor plus Gaussian noise at 5% of its own standard deviation), and
`top1_flat_damaged`: the flattened-argmax agreement of the damaged copy's first output with the loaded model's (what
edgekit measured before). Then `user_metric_used` (a function passed to edgekit.compress drives the INT8 search: its
name is report.json's metric and its value the summary's quality) and `rec_budget_held` (the recogniser compressed
by `--recipe auto --task text-recognize`: its recommended artifact within 1 point of character accuracy of the
loaded model on held-out lines nobody trained or calibrated on).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
NOISE = 0.05
SHAPE_OPS = {"Resize", "Upsample", "Reshape", "Expand", "Tile", "Slice", "Pad", "ConstantOfShape", "Range"}


def _fonts() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _rapid_models() -> Path:
    py = ROOT / ".venv-bench" / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import rapidocr_onnxruntime, os; print(os.path.dirname("
                                       "rapidocr_onnxruntime.__file__))"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("RapidOCR's models are missing: run `make bench-deps`")
    return Path(r.stdout.strip()) / "models"


def lines(n: int, seed: int, width: int) -> tuple[np.ndarray, list[str]]:
    """Rendered text lines at 3x48xwidth (PaddleOCR's recogniser / classifier layout, BGR as OpenCV reads), texts."""
    from _common import _font_paths, _line_text, render_line
    from PIL import Image

    rng = np.random.default_rng(seed)
    fonts = _font_paths()
    xs, texts = [], []
    for _ in range(n):
        text = _line_text(rng)
        img = render_line(text, fonts[int(rng.integers(len(fonts)))], int(rng.integers(20, 36)), rng)[:, :, ::-1]
        h, w = img.shape[:2]
        rw = min(width, int(np.ceil(48 * w / h)))
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((rw, 48), Image.BILINEAR), np.float32)
        out = np.zeros((3, 48, width), np.float32)
        out[:, :, :rw] = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        xs.append(out)
        texts.append(text)
    return np.stack(xs), texts


def pages(n: int, seed: int) -> np.ndarray:
    """Rendered pages resized as RapidOCR feeds its detector (640x480 -> 992x736), normalised, NCHW."""
    from _ocr_pages import render_page
    from PIL import Image

    out = []
    for i in range(n):
        img, _, _ = render_page(seed + i, _fonts())
        arr = np.asarray(Image.fromarray(img).resize((992, 736), Image.BILINEAR), np.float32)
        out.append((arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)
    return np.stack(out)


def photos(size: int, layout: str, scale: str) -> np.ndarray:
    """scikit-image's sample photographs, resized square (NCHW or NHWC), in [0, 1] or [-1, 1]."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / ".bench-img"))  # `make bench-deps`: scikit-image, for the benchmark only
    from skimage import data

    imgs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
            np.stack([data.camera()] * 3, -1), data.hubble_deep_field(), np.stack([data.moon()] * 3, -1)]
    out = []
    for im in imgs:
        arr = np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR), np.float32) / 255.0
        arr = arr * 2 - 1 if scale == "-1..1" else arr
        out.append(arr.transpose(2, 0, 1) if layout == "NCHW" else arr)
    return np.stack(out).astype(np.float32)


def damaged_onnx(path: Path, out: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    m = onnx.load(str(path))
    # Weights only: not the float arguments of shape operators (a Resize's scales: noise there changes the shape)
    shape_args = {i for n in m.graph.node if n.op_type in SHAPE_OPS for i in n.input[1:]}
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype.kind == "f" and a.size > 1 and init.name not in shape_args:
            noisy = a + rng.standard_normal(a.shape) * NOISE * (a.std() or 1.0)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(a.dtype), init.name))
    for node in m.graph.node:  # weights a Paddle export keeps in Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    a = numpy_helper.to_array(attr.t)
                    if a.dtype.kind == "f" and a.size > 16:
                        noisy = a + rng.standard_normal(a.shape) * NOISE * (a.std() or 1.0)
                        attr.t.CopyFrom(numpy_helper.from_array(noisy.astype(a.dtype), attr.t.name))
    onnx.save(m, str(out))
    return out


def damaged_tflite(path: Path, out: Path, seed: int = 0) -> Path:
    from ai_edge_litert.tools import flatbuffer_utils

    from edgekit.importers.tflite_file import float32_weights

    rng = np.random.default_rng(seed)
    content, _ = float32_weights(path.read_bytes())
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for t in model.subgraphs[0].tensors:
        buf = model.buffers[t.buffer].data if 0 <= t.buffer < len(model.buffers) else None
        if t.type == 0 and buf is not None and len(buf) > 64:
            a = np.frombuffer(np.asarray(buf, np.uint8).tobytes(), np.float32)
            noisy = (a + rng.standard_normal(a.shape) * NOISE * (a.std() or 1.0)).astype(np.float32)
            model.buffers[t.buffer].data = np.frombuffer(noisy.tobytes(), np.uint8)
    out.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return out


def outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    from edgekit.runtimes import load_runner, run_outputs

    runtime = {".tflite": "litert", ".pte": "executorch"}.get(path.suffix, "onnxruntime")
    return run_outputs(load_runner(runtime, path), x)


def flat_top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)).mean())


def score(model: Path, damaged: Path, x: np.ndarray, task: str, labels: object = None,
          options: dict | None = None) -> dict:
    """The auto metric and the task's metric for the loaded model and its damaged copy."""
    from edgekit.quality import choose, class_vector, drop
    from edgekit.signature import from_tflite, onnx_file_signature

    sig = from_tflite(model) if model.suffix == ".tflite" else onnx_file_signature(model)
    ref, bad = outputs(model, x), outputs(damaged, x)
    row: dict = {"top1_flat_damaged": round(flat_top1(bad[0], ref[0]), 4)}
    for kind, t in (("auto", "auto"), ("task", task)):
        metric, why = choose(t, sig, labels, options)
        lab = labels if metric.labelled else None
        loaded, hurt = metric.score(ref, lab, ref), metric.score(bad, lab, ref)
        row[kind] = {"metric": metric.name, "task": metric.task, "unit": metric.unit, "loaded": round(loaded, 4),
                     "damaged": round(hurt, 4), "drop": round(drop(metric, loaded, hurt), 3),
                     "flattened_top1": metric.task == "classify" and not class_vector(sig.outputs[0].shape)}
    return row


def yolov8n(out: Path) -> Path:
    from wild_models import yolov8n as build

    return build(out)


def user_metric(out: Path) -> bool:
    """A function passed to edgekit.compress drives the INT8 search: report.json names it and the summary's quality
    is its value."""
    import edgekit
    from edgekit.data import digits

    calls = []

    def balanced_accuracy(outs: list[np.ndarray], labels: np.ndarray) -> float:
        calls.append(len(labels))
        pred = np.asarray(outs[0]).argmax(1)
        return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))

    ds = digits()
    r = edgekit.compress(None, "host", data=(ds.x_train, ds.y_train), metric=balanced_accuracy, recipe="quant",
                         out=out / "user-metric", overrides={"quantize": {"trials": 6, "formats": ["onnx"]}},
                         resume=False)  # a fresh run: a reused one would never call the metric
    rep = r.report
    search = next(s for s in rep["stages"] if s["name"] == "quantize")
    return bool(calls) and rep["quality"]["metric"] == "balanced_accuracy" and \
        search["metrics"]["quality_metric"] == "balanced_accuracy" and rep["summary"]["quality_metric"] == \
        "balanced_accuracy"


def rec_budget(out: Path, rec: Path, run: Path | None = None) -> dict:
    """`edgekit compress rec --task text-recognize` (auto) on lines with their text (or an existing run of that
    command: `--rec-run`, e.g. benchmarks/ocr_client.py's runs/rec-auto); the recommended artifact's character
    accuracy on held-out lines against the loaded model's."""
    from edgekit.quality import choose
    from edgekit.signature import onnx_file_signature

    if run is None:
        x, y = lines(240, 7, 320)
        np.savez(out / "rec.npz", x=x, y=np.array(y))
        run = out / "rec-auto"
        r = subprocess.run([sys.executable, "-m", "edgekit", "compress", str(rec), "--input-shape", "1,3,48,320",
                            "--data", str(out / "rec.npz"), "--task", "text-recognize", "--out", str(run)],
                           capture_output=True, text=True, timeout=5400)
        if r.returncode != 0:
            return {"held": False, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    rep = json.loads((run / "report.json").read_text())
    best = run / rep["summary"]["artifact"]
    hx, hy = lines(200, 99, 320)  # held out: another seed, nobody trained or calibrated on these
    metric, _ = choose("text-recognize", onnx_file_signature(rec), hy)
    loaded = metric.score(outputs(rec, hx), hy, None)
    after = metric.score(outputs(best, hx), hy, None)  # the recommended artifact in its own runtime
    return {"held": 100 * (loaded - after) <= 1.0, "run": str(run), "artifact": rep["summary"]["artifact"],
            "loaded": round(loaded, 4), "after": round(after, 4), "drop_pts": round(100 * (loaded - after), 2),
            "run_drop": rep["summary"]["quality_drop"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/task-quality"))
    p.add_argument("--skip-rec-budget", action="store_true")
    p.add_argument("--rec-run", type=Path, help="an existing `edgekit compress REC --task text-recognize` run folder "
                                                "to judge instead of making one (e.g. /tmp/ocr-bench/runs/rec-auto)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    ocr = _rapid_models()
    tasks = {}
    cls = ocr / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    from _common import text_lines

    x, y = text_lines(200, seed=3)
    tasks["ppocr_cls"] = score(cls, damaged_onnx(cls, a.out / "cls-damaged.onnx"), x, "classify", y)
    det = ocr / "ch_PP-OCRv4_det_infer.onnx"
    tasks["ppocrv4_det"] = score(det, damaged_onnx(det, a.out / "det-damaged.onnx"), pages(6, 500), "text-detect")
    rec = ocr / "ch_PP-OCRv4_rec_infer.onnx"
    xr, yr = lines(120, 11, 320)
    tasks["ppocrv4_rec"] = score(rec, damaged_onnx(rec, a.out / "rec-damaged.onnx"), xr, "text-recognize", yr)
    yolo = yolov8n(a.out)
    tasks["yolov8n"] = score(yolo, damaged_onnx(yolo, a.out / "yolo-damaged.onnx"), photos(320, "NCHW", "0..1"),
                             "detect", None, {"layout": "yolov8"})
    face = ROOT / ".bench-models" / "face_detection_short_range.tflite"
    tasks["mediapipe_face"] = score(face, damaged_tflite(face, a.out / "face-damaged.tflite"),
                                    photos(128, "NHWC", "-1..1"), "fidelity")
    for name, row in tasks.items():
        print(json.dumps({name: row}), flush=True)
    used = user_metric(a.out)
    held = {"held": None, "skipped": True} if a.skip_rec_budget else rec_budget(a.out, rec, a.rec_run)
    # "clearly worse": at least 1 point (or 1 dB) below the model as loaded
    chosen = {n: bool(r["auto"]["drop"] >= 1.0) for n, r in tasks.items()}
    own = {n: bool(r["task"]["drop"] >= 1.0) for n, r in tasks.items()}
    print(json.dumps({"tasks": tasks, "damaged_worse_on_chosen_metric": chosen,
                      "damaged_worse_on_task_metric": own,
                      "never_flattened_top1_for_non_classifier": not any(
                          r["task"]["flattened_top1"] or r["auto"]["flattened_top1"] for r in tasks.values()),
                      "user_metric_used": used, "rec_budget_held": held.get("held"), "rec_budget": held}))


if __name__ == "__main__":
    main()
