"""detect: COCO mean average precision of a detector's boxes, scored by pycocotools (mAP@0.5 is the metric;
mAP@0.5:0.95 is recorded beside it).

Heads read (`layout`, default: from the output's shape):
    yolov8        one output (N, 4 + classes, anchors): cx, cy, w, h in input pixels, then class scores
    yolov5        one output (N, anchors, 5 + classes): cx, cy, w, h, objectness, class scores
    boxes-scores  two outputs, boxes (N, anchors, 4) as x1, y1, x2, y2 and scores (N, anchors, classes): an SSD or
                  anchor head decoded with the user's anchors beforehand, or a model that decodes itself
Detections above `conf` (0.001, as COCO evaluation does) go through per-class NMS at IoU 0.7 (at most 300 per input).

Targets: labels, per input an (n, 5) array x1, y1, x2, y2, class in input pixels (or a COCO JSON, `labels_from_coco`).
Without labels, the loaded model's own detections are the targets: those scoring at least 0.25 after NMS, or, for a
model that scores nothing that high (an untrained head), its 20 best per input.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, SettingsError
from edgekit.quality import BaseMetric

LAYOUTS = ("yolov8", "yolov5", "boxes-scores")


@dataclass
class Detection(BaseMetric):
    layout: str = ""
    conf: float = 0.001
    nms_iou: float = 0.7
    max_det: int = 300
    target_conf: float = 0.25
    last: dict[str, float] = field(default_factory=dict)  # mAP@0.5 and mAP@0.5:0.95 of the last score()

    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> Detection:
        layout = options.get("layout", "")
        if layout and layout not in LAYOUTS:
            raise SettingsError(f"task detect: layout must be one of {LAYOUTS}, got '{layout}'")
        return cls(name="mAP@0.5", task="detect", labelled=labels is not None, layout=layout,
                   conf=float(options.get("conf", 0.001)))

    def detections(self, outputs: list[np.ndarray], conf: float | None = None) -> list[np.ndarray]:
        """Per input an (n, 6) array x1, y1, x2, y2, score, class after NMS."""
        conf = self.conf if conf is None else conf
        boxes, scores = self._decode(outputs)
        out = []
        for b, s in zip(boxes, scores, strict=True):
            cls = s.argmax(1)
            best = s[np.arange(len(s)), cls]
            keep = np.flatnonzero(best >= conf)
            keep = keep[np.argsort(-best[keep])][: 30 * self.max_det]
            picked = _nms(b[keep], best[keep], cls[keep], self.nms_iou)[: self.max_det]
            idx = keep[picked]
            out.append(np.column_stack([b[idx], best[idx], cls[idx]]) if len(idx) else np.zeros((0, 6)))
        return out

    def _decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        layout = self.layout or _guess(outputs)
        if layout == "boxes-scores":
            return np.asarray(outputs[0], np.float64), np.asarray(outputs[1], np.float64)
        out = np.asarray(outputs[0], np.float64)
        if out.ndim != 3:
            raise SettingsError(f"task detect: output 0 has shape {list(out.shape)}; a {layout} head is (N, ...)")
        if layout == "yolov8":
            out = out.transpose(0, 2, 1)  # (N, anchors, 4 + classes)
            xywh, scores = out[..., :4], out[..., 4:]
        else:
            xywh, scores = out[..., :4], out[..., 5:] * out[..., 4:5]
        boxes = np.concatenate([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)
        return boxes, scores

    def _targets(self, n: int, labels: Any, reference: list[np.ndarray] | None) -> list[np.ndarray]:
        if self.labelled and labels is not None:
            return [np.asarray(t, np.float64).reshape(-1, 5) for t in list(labels)[:n]]
        ref = self.detections([np.asarray(r)[:n] for r in reference])
        out = []
        for d in ref:
            sure = d[d[:, 4] >= self.target_conf]
            chosen = sure if len(sure) else d[:20]
            out.append(np.column_stack([chosen[:, :4], chosen[:, 5]]) if len(chosen) else np.zeros((0, 5)))
        return out

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        if reference is None and not self.labelled:
            return 1.0
        n = len(outputs[0])
        ap50, ap = coco_map(self.detections(outputs), self._targets(n, labels, reference))
        self.last = {"mAP@0.5": ap50, "mAP@0.5:0.95": ap}
        return ap50


def _guess(outputs: list[np.ndarray]) -> str:
    if len(outputs) >= 2 and np.asarray(outputs[0]).ndim == 3 and np.asarray(outputs[0]).shape[-1] == 4:
        return "boxes-scores"
    out = np.asarray(outputs[0])
    if out.ndim == 3 and out.shape[1] < out.shape[2]:
        return "yolov8"
    return "yolov5"


def _nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy per-class NMS, best first."""
    from edgekit.quality.text_detect import iou_matrix

    order = np.argsort(-scores)
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    ious = iou_matrix(boxes, boxes) if len(boxes) <= 4000 else None
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        row = ious[i] if ious is not None else iou_matrix(boxes[i:i + 1], boxes)[0]
        suppressed |= (row > iou) & (classes == classes[i])
    return np.asarray(keep, np.int64)


def coco_map(detections: list[np.ndarray], targets: list[np.ndarray]) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) by pycocotools over all inputs; 1.0 when there is nothing to find and nothing was
    found, 0.0 when there is nothing to find but something was."""
    if not any(len(t) for t in targets):
        return (1.0, 1.0) if not any(len(d) for d in detections) else (0.0, 0.0)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    classes = sorted({int(c) for t in targets for c in t[:, 4]} | {int(c) for d in detections for c in d[:, 5]})
    gt: dict[str, Any] = {"images": [{"id": i + 1} for i in range(len(targets))],
                          "categories": [{"id": c + 1} for c in classes], "annotations": []}
    for i, t in enumerate(targets):
        for x1, y1, x2, y2, c in t:
            w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                      "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    dets = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)],
             "score": float(s)} for i, d in enumerate(detections) for x1, y1, x2, y2, s, c in d]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if not dets:
            return 0.0, 0.0
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 300]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50 = float(ev.stats[0]), float(ev.stats[1])
    return max(ap50, 0.0), max(ap, 0.0)


def labels_from_coco(path: str | Path, n: int) -> list[np.ndarray]:
    """Per-input target boxes (n, 5: x1, y1, x2, y2, class) from a COCO JSON whose `images` are listed in the order
    of the data's rows (category ids become classes 0, 1, ... in sorted order)."""
    try:
        data = json.loads(Path(path).read_text())
        images = [im["id"] for im in data["images"]]
        cats = sorted(c["id"] for c in data.get("categories", []))
        anns = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a COCO JSON with images and annotations ({e})") from None
    if len(images) < n:
        raise InputError(f"{path} lists {len(images)} images, the data has {n} inputs")
    row = {im: i for i, im in enumerate(images[:n])}
    index = {c: k for k, c in enumerate(cats)}
    boxes: list[list[list[float]]] = [[] for _ in range(n)]
    for a in anns:
        if a.get("image_id") in row:
            x, y, w, h = a["bbox"]
            boxes[row[a["image_id"]]].append([x, y, x + w, y + h, index.get(a["category_id"], a["category_id"])])
    return [np.asarray(b, np.float64).reshape(-1, 5) for b in boxes]
