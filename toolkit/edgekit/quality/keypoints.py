"""keypoints: normalised mean error (NME, lower is better) of landmarks: the mean distance between predicted and
target points divided by the diagonal of the target points' bounding box. Targets are label points (N, K, 2|3), else
the loaded model's. The output is (N, K*D) or (N, K, D) with D the point's dimensions (`dims`, default 2: x, y)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.quality import BaseMetric


@dataclass
class Keypoints(BaseMetric):
    output: int = 0
    dims: int = 2

    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> Keypoints:
        return cls(name="NME", task="keypoints", higher_is_better=False, labelled=labels is not None,
                   output=int(options.get("output", 0)), dims=int(options.get("dims", 2)))

    def _points(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, np.float64)
        flat = out.reshape(len(out), -1)
        d = out.shape[-1] if out.ndim == 3 else self.dims
        return flat.reshape(len(out), -1, d)[:, :, :2]

    def per_input(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        pred = self._points(outputs[self.output])
        if self.labelled and labels is not None:
            target = np.asarray(labels, np.float64)[: len(pred)][:, :, :2]
        elif reference is not None:
            target = self._points(np.asarray(reference[self.output])[: len(pred)])
        else:
            return np.zeros(len(pred))
        diag = np.linalg.norm(target.max(1) - target.min(1), axis=1)
        err = np.linalg.norm(pred - target, axis=2).mean(1)
        return err / np.where(diag > 0, diag, 1.0)

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        return float(np.mean(self.per_input(outputs, labels, reference)))
