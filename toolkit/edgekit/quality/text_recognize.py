"""text-recognize: character accuracy of CTC greedy decoding: per time step the best class, repeats collapsed,
blanks (class 0) dropped. Accuracy is 1 - edit distance / characters of the target, over all inputs.

Labels are strings; they are compared with the decoded text through the alphabet: the user's (`alphabet`, one
character per line as PaddleOCR's dictionaries are) or the model's own metadata (an ONNX file's `character`
entry, as PP-OCR recognisers carry it), with the blank first (and a space last, as PaddleOCR adds). Without labels
the decoded class sequences are compared with the loaded model's, and no alphabet is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import SettingsError
from edgekit.quality import BaseMetric


@dataclass
class TextRecognition(BaseMetric):
    output: int = 0
    alphabet: tuple[str, ...] = ()

    @classmethod
    def create(cls, labels: Any, signature: Any, options: dict[str, Any]) -> TextRecognition:
        alphabet = tuple(options.get("alphabet") or ())
        if not alphabet and signature is not None:
            meta = dict(signature.metadata)
            if "character" in meta:  # PP-OCR: the dictionary in the file; blank first, a space last
                alphabet = ("", *meta["character"].splitlines(), " ")
        labelled = labels is not None
        if labelled and not alphabet:
            raise SettingsError("task text-recognize: labels are strings, so the alphabet is needed: the model has "
                                "no 'character' metadata; pass --alphabet FILE (one character per line)")
        return cls(name="char_accuracy", task="text-recognize", labelled=labelled, output=int(options.get("output", 0)),
                   alphabet=alphabet)

    def decode(self, out: np.ndarray) -> list[list[int]]:
        """Greedy CTC: (N, T, C) -> class ids per input, repeats collapsed, blank (0) dropped."""
        out = np.asarray(out)
        if out.ndim != 3:
            raise SettingsError(f"task text-recognize: output {self.output} has shape {list(out.shape)}, not "
                                f"(N, time steps, classes)")
        best = out.argmax(2)
        seqs = []
        for row in best:
            keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != 0)
            seqs.append(row[keep].tolist())
        return seqs

    def text(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids if 0 <= i < len(self.alphabet))

    def _pairs(self, outputs: list[np.ndarray], labels: Any,
               reference: list[np.ndarray] | None) -> list[tuple[Any, Any]]:
        got = self.decode(outputs[self.output])
        if self.labelled and labels is not None:
            return [(self.text(g), str(t)) for g, t in zip(got, list(labels)[: len(got)], strict=True)]
        if reference is None:
            return [(g, g) for g in got]
        ref = self.decode(np.asarray(reference[self.output])[: len(got)])
        return list(zip(got, ref, strict=True))

    def per_input(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> np.ndarray:
        return np.array([1.0 - min(1.0, edit_distance(p, t) / max(len(t), 1))
                         for p, t in self._pairs(outputs, labels, reference)])

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        pairs = self._pairs(outputs, labels, reference)
        errors = sum(edit_distance(p, t) for p, t in pairs)
        chars = sum(len(t) for _, t in pairs)
        return float(max(0.0, 1.0 - errors / chars)) if chars else float(all(p == t for p, t in pairs))


def edit_distance(a: Any, b: Any) -> int:
    """Levenshtein distance of two sequences (strings or id lists)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]
