"""segment: mean IoU of the per-pixel class map (argmax over the class axis of an (N, C, H, W) output, or an
(N, H, W) class map) against label maps, else against the loaded model's map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.quality import BaseMetric


@dataclass
class Segmentation(BaseMetric):
    output: int = 0
    class_axis: int = 1

    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> Segmentation:
        return cls(name="mIoU", task="segment", labelled=labels is not None, output=int(options.get("output", 0)),
                   class_axis=int(options.get("class_axis", 1)))

    def _classes(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out)
        return out.argmax(self.class_axis) if out.ndim == 4 else out.astype(np.int64)

    def _target(self, n: int, labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        if self.labelled and labels is not None:
            return np.asarray(labels)[:n].astype(np.int64)
        return self._classes(np.asarray(reference[self.output])[:n])

    def per_input(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        pred = self._classes(outputs[self.output])
        if reference is None and not self.labelled:
            return np.ones(len(pred))
        target = self._target(len(pred), labels, reference)
        return np.array([_miou(p, t) for p, t in zip(pred, target, strict=True)])

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        pred = self._classes(outputs[self.output])
        if reference is None and not self.labelled:
            return 1.0
        return _miou(pred, self._target(len(pred), labels, reference))


def _miou(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over the classes present in either map of |pred ∩ target| / |pred ∪ target|."""
    ious = []
    for c in np.union1d(np.unique(pred), np.unique(target)):
        p, t = pred == c, target == c
        union = np.logical_or(p, t).sum()
        if union:
            ious.append(np.logical_and(p, t).sum() / union)
    return float(np.mean(ious)) if ious else 1.0
