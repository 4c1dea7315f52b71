"""fidelity: how closely every output follows the loaded model's: SQNR in dB (the worst output counts), capped at
60 dB (beyond it two float programs are numerically the same), with cosine similarity beside it. The label-free
default for any model edgekit cannot name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.quality import BaseMetric

CAP_DB = 60.0


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio of `other` against `reference`, in dB, capped at CAP_DB."""
    ref = np.nan_to_num(np.asarray(reference, np.float64))
    noise = float(np.mean((ref - np.nan_to_num(np.asarray(other, np.float64).reshape(ref.shape))) ** 2))
    signal = float(np.mean(ref ** 2))
    if noise <= 0:
        return CAP_DB
    return float(min(CAP_DB, 10.0 * np.log10(max(signal, 1e-30) / noise)))


def cosine(reference: np.ndarray, other: np.ndarray) -> float:
    a = np.asarray(reference, np.float64).ravel()
    b = np.asarray(other, np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den else float(np.array_equal(a, b))


@dataclass
class Fidelity(BaseMetric):
    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> Fidelity:
        return cls(name="sqnr_db", task="fidelity", unit="dB", labelled=False)

    def describe(self) -> str:
        return (f"output fidelity: SQNR in dB of every output against the loaded model (the worst output counts, "
                f"{CAP_DB:g} dB = identical), no labels")

    def per_input(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        n = len(outputs[0])
        if reference is None:
            return np.full(n, CAP_DB)
        return np.array([min(sqnr_db(np.asarray(r)[i], np.asarray(o)[i]) for o, r in zip(outputs, reference,
                                                                                            strict=False))
                         for i in range(n)])

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        if reference is None:
            return CAP_DB
        return float(min(sqnr_db(np.asarray(r)[: len(o)], o) for o, r in zip(outputs, reference, strict=False)))

    def cosine(self, outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
        return float(min(cosine(np.asarray(r)[: len(o)], o) for o, r in zip(outputs, reference, strict=False)))
