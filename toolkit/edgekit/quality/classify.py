"""classify: accuracy against class-id labels, else top-1 agreement with the loaded model; on class vectors only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import SettingsError
from edgekit.quality import BaseMetric


@dataclass
class Classification(BaseMetric):
    output: int = 0  # which output is the class vector

    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> Classification:
        output = int(options.get("output", 0))
        labelled = labels is not None
        return cls(name="accuracy" if labelled else "agreement", task="classify", labelled=labelled, output=output)

    def _top(self, outputs: list[np.ndarray]) -> np.ndarray:
        out = np.asarray(outputs[self.output])
        rows = out.reshape(len(out), -1)
        if rows.shape[1] < 2:
            raise SettingsError(f"task classify: output {self.output} has shape {list(out.shape)}, not a class "
                                f"vector (N, K > 1)")
        return rows.argmax(1)

    def per_input(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        top = self._top(outputs)
        if self.labelled and labels is not None:
            return top == np.asarray(labels)[: len(top)]
        if reference is None:
            return np.ones(len(top), bool)
        return top == self._top([np.asarray(r)[: len(top)] for r in reference])

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        return float(np.mean(self.per_input(outputs, labels, reference)))
