"""embed: cosine similarity of each input's embedding with the loaded model's (labels are not used)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.quality import BaseMetric


@dataclass
class Embedding(BaseMetric):
    output: int = 0

    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> Embedding:
        return cls(name="cosine", task="embed", labelled=False, output=int(options.get("output", 0)))

    def per_input(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        out = np.asarray(outputs[self.output], np.float64)
        rows = out.reshape(len(out), -1)
        if reference is None:
            return np.ones(len(rows))
        ref = np.asarray(reference[self.output], np.float64)[: len(rows)].reshape(len(rows), -1)
        den = np.linalg.norm(rows, axis=1) * np.linalg.norm(ref, axis=1)
        return np.where(den > 0, (rows * ref).sum(1) / np.where(den > 0, den, 1.0), 1.0)

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        return float(np.mean(self.per_input(outputs, labels, reference)))
