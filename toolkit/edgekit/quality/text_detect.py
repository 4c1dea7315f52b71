"""text-detect: F1 of text regions found in a DB-style probability map (N, 1, H, W): the map thresholded at
`threshold` (0.3, as PaddleOCR's DB post-processing), connected regions of at least `min_area` pixels taken as
boxes, and boxes matched one to one at IoU >= 0.5. Targets are label boxes (per input an (n, 4) array x1, y1, x2, y2
in map pixels), else the regions of the loaded model's map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.quality import BaseMetric


@dataclass
class TextDetection(BaseMetric):
    output: int = 0
    threshold: float = 0.3
    min_area: int = 9
    iou: float = 0.5

    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> TextDetection:
        return cls(name="region_f1", task="text-detect", labelled=labels is not None,
                   output=int(options.get("output", 0)), threshold=float(options.get("threshold", 0.3)),
                   min_area=int(options.get("min_area", 9)))

    def boxes(self, prob_map: np.ndarray) -> np.ndarray:
        """Boxes (n, 4) of the connected regions above the threshold in one map (H, W) or (1, H, W)."""
        from scipy import ndimage

        m = np.asarray(prob_map)
        m = m.reshape(m.shape[-2:])
        regions, n = ndimage.label(m > self.threshold)
        out = []
        for sl in ndimage.find_objects(regions):
            if sl is None:
                continue
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            if h * w >= self.min_area:
                out.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
        return np.asarray(out, np.float64).reshape(-1, 4)

    def _counts(self, outputs: list[np.ndarray], labels: Any,
                reference: list[np.ndarray] | None) -> list[tuple[int, int, int]]:
        maps = np.asarray(outputs[self.output])
        if self.labelled and labels is not None:
            targets = [np.asarray(t, np.float64).reshape(-1, 4) for t in list(labels)[: len(maps)]]
        elif reference is not None:
            targets = [self.boxes(r) for r in np.asarray(reference[self.output])[: len(maps)]]
        else:
            return [(1, 1, 1)] * len(maps)
        return [match(self.boxes(m), t, self.iou) for m, t in zip(maps, targets, strict=True)]

    def per_input(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        return np.array([_f1(*c) for c in self._counts(outputs, labels, reference)])

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        counts = np.array(self._counts(outputs, labels, reference)).sum(0)
        return _f1(*counts)


def _f1(matched: int, predicted: int, targets: int) -> float:
    if predicted == 0 and targets == 0:
        return 1.0
    return 2.0 * matched / (predicted + targets) if predicted + targets else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (n, 4) with every box of b (m, 4), boxes as x1, y1, x2, y2."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match(pred: np.ndarray, target: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(one-to-one matches at IoU >= threshold, greedily by IoU; predicted boxes; target boxes)."""
    ious = iou_matrix(pred, target)
    matched = 0
    while ious.size and ious.max() >= threshold:
        i, j = np.unravel_index(int(ious.argmax()), ious.shape)
        matched += 1
        ious[i, :] = -1
        ious[:, j] = -1
    return matched, len(pred), len(target)
