"""The RapidOCR side of benchmarks/ocr_client.py: runs in the benchmark's own environment (RapidOCR, OpenCV,
Pillow; never edgekit's), started by ocr_client.py as `PYTHON _ocr_client.py COMMAND ...`, and prints one JSON
object.

    data OUT --pages N --seed S --fonts DIR     inputs for det / cls / rec made by RapidOCR's own pre-processing
    run --models JSON --pages N --seed S --fonts DIR
                                                each model set's character accuracy, failed pages and seconds per
                                                page, the sets interleaved page by page, one thread
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ocr_pages import char_errors, page_text, render_page  # noqa: E402


def _engine(models: dict[str, str] | None = None):
    from rapidocr_onnxruntime import RapidOCR

    kwargs = {f"{k}_model_path": v for k, v in (models or {}).items()}
    return RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, **kwargs)


def _iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def data(out: Path, pages: int, seed: int, fonts: Path) -> dict:
    """det.npz (pages at the detector's input), cls.npz (crops, half turned 180 degrees: labels 0/1), rec.npz (crops
    and their text): from pages nobody else sees (seeds from `seed`), through RapidOCR's detector and its crops."""
    eng = _engine()
    det_x, crops, texts = [], [], []
    for i in range(pages):
        img, lines, boxes = render_page(seed + i, fonts)
        det_x.append(eng.text_det.get_preprocess(max(img.shape[:2]))(img)[0])
        found, _ = eng.text_det(img)
        for quad, crop in zip(found if found is not None else [], eng.get_crop_img_list(img, found)
                              if found is not None else [], strict=True):
            box = (quad[:, 0].min(), quad[:, 1].min(), quad[:, 0].max(), quad[:, 1].max())
            match = max(range(len(boxes)), key=lambda k: _iou(box, boxes[k]))
            if _iou(box, boxes[match]) >= 0.7:  # a crop of one whole line: its text is the label
                crops.append(crop)
                texts.append(lines[match])
    shapes = {tuple(x.shape) for x in det_x}
    if len(shapes) != 1:
        raise SystemExit(f"pages gave detector inputs of several shapes: {shapes}")
    rng = np.random.default_rng(seed)
    flips = rng.integers(0, 2, len(crops))
    cls_x = np.stack([eng.text_cls.resize_norm_img(c[::-1, ::-1] if f else c) for c, f in zip(crops, flips,
                                                                                          strict=True)])
    rec_x = np.stack([eng.text_rec.resize_norm_img(c, 320 / 48) for c in crops])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "det.npz", x=np.stack(det_x).astype(np.float32))
    np.savez(out / "cls.npz", x=cls_x.astype(np.float32), y=flips.astype(np.int64))
    np.savez(out / "rec.npz", x=rec_x.astype(np.float32), y=np.array(texts))
    return {"det_shape": list(det_x[0].shape), "pages": pages, "lines": len(crops)}


def run(models: dict[str, dict[str, str]], pages: int, seed: int, fonts: Path) -> dict:
    """Every set of models on the same pages: per page, each set in turn (a slow phase of the machine hits all)."""
    engines = {name: _engine(m) for name, m in models.items()}
    stats = {name: {"errors": 0, "chars": 0, "failed": 0, "seconds": [], "first_error": ""} for name in models}
    for i in range(pages):
        img, lines, _ = render_page(seed + i, fonts)
        for name, eng in engines.items():
            s = stats[name]
            t0 = time.perf_counter()
            try:
                result, _ = eng(img)
            except Exception as e:  # noqa: BLE001 - a page the client cannot read with these models
                s["failed"] += 1
                s["first_error"] = s["first_error"] or f"{type(e).__name__}: {str(e).splitlines()[-1][:200]}"
                continue
            s["seconds"].append(time.perf_counter() - t0)
            e, n = char_errors(page_text(result), lines)
            s["errors"] += e
            s["chars"] += n
    return {name: {"char_acc": 1 - s["errors"] / s["chars"] if s["chars"] else 0.0, "pages_failed": s["failed"],
                   "seconds_per_page": statistics.median(s["seconds"]) if s["seconds"] else None,
                   "first_error": s["first_error"]} for name, s in stats.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["data", "run"])
    p.add_argument("out", nargs="?", default="")
    p.add_argument("--models", default="")
    p.add_argument("--pages", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fonts", required=True)
    a = p.parse_args()
    if a.command == "data":
        result = data(Path(a.out), a.pages, a.seed, Path(a.fonts))
    else:
        result = run(json.loads(Path(a.models).read_text()), a.pages, a.seed, Path(a.fonts))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
