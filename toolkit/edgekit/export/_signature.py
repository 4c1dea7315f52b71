"""What the exporters share to keep the model's signature (edgekit.signature): the dynamic dimensions torch.export
is asked to keep, and the record every artifact gets of whether it kept the signature.

Dynamic dimensions are exported as `torch.export.Dim.AUTO`: dynamic where the model's code allows it, specialised
(static) where it fixes the size. Which of the two happened is read back from the artifact itself, never assumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.signature import Signature


def dynamic_shapes(signature: Signature | None) -> tuple[dict[int, Any], ...] | None:
    """torch.export's `dynamic_shapes` for the (single) input: {axis: Dim.AUTO} for its dynamic axes, or None
    when nothing is dynamic (or the model has several inputs: those take the native route)."""
    if signature is None or len(signature.inputs) != 1 or not signature.inputs[0].dynamic_axes:
        return None
    from torch.export import Dim

    return ({axis: Dim.AUTO for axis in signature.inputs[0].dynamic_axes},)


def bounded_attempts(signature: Signature | None, x: Any, max_input_mb: float | None = None
                     ) -> list[tuple[Any, dict[int, Any] | None]]:
    """(example, {axis: torch.export.Dim with bounds}) to try in order, for exporters that need explicit bounds
    (litert-torch, ExecuTorch): wide ranges, then ranges near the example's size; the last attempt is static. A
    dynamic batch is traced at batch 2 (torch.export fixes a dimension traced at size 1).

    `max_input_mb` bounds the input at the upper bounds, for a runtime that plans its memory for the largest shape
    it accepts (ExecuTorch: PP-OCRv4's detector at 736x992 holds 0.16 GB static, 0.9 GB with a batch of up to 8,
    1.8 GB up to 1024): the other axes shrink towards the example's size, then the batch, never below 2."""
    axes = signature.inputs[0].dynamic_axes if signature is not None and len(signature.inputs) == 1 else ()
    if not axes:
        return [(x, None)]
    import torch
    from torch.export import Dim

    example = torch.cat([x, x]) if 0 in axes and x.shape[0] == 1 else x
    size = example.shape

    def dims(lo: Any, hi: Any) -> dict[int, Any]:
        upper = _within({a: hi(a) for a in axes}, tuple(size), max_input_mb, example.element_size())
        return {a: Dim(f"d{a}", min=lo(a), max=upper[a]) for a in axes}

    attempts = [(example, dims(lambda a: 1 if a == 0 else 2, lambda a: 1024 if a == 0 else 8192)),
                (example, dims(lambda a: 1 if a == 0 else max(2, size[a] // 2), lambda a: max(8, size[a] * 4)))]
    if 0 in axes and len(axes) > 1:  # the batch alone, when the model's code fixes the other sizes
        upper = _within({0: 1024}, tuple(size), max_input_mb, example.element_size())
        attempts.append((example, {0: Dim("d0", min=1, max=upper[0])}))
    return [*attempts, (x, None)]


def _within(hi: dict[int, int], shape: tuple[int, ...], max_mb: float | None, itemsize: int) -> dict[int, int]:
    """Upper bounds `hi` shrunk until an input at them takes at most `max_mb` (None: as they are): the axes other
    than the batch evenly, down to the example's size, then the batch, down to 2."""
    if max_mb is None:
        return hi
    budget = max_mb * 2 ** 20 / itemsize  # elements

    def elements() -> float:
        return float(np.prod([hi.get(a, d) for a, d in enumerate(shape)]))

    hi = dict(hi)
    others = [a for a in hi if a != 0]
    if others and elements() > budget:
        scale = (budget / elements()) ** (1 / len(others))
        for a in others:
            hi[a] = max(shape[a], int(hi[a] * scale))
    if 0 in hi and elements() > budget:
        hi[0] = max(2, int(hi[0] * budget / elements()))
    return hi


# Why an exporter fell back to static dimensions, by artifact path: the artifact record's `why` says it.
_FALLBACKS: dict[str, str] = {}


def note_fallback(path: Path, tool: str, error: BaseException | None) -> None:
    from edgekit.errors import first_line

    if error is not None:
        _FALLBACKS[str(Path(path).resolve())] = f"{tool} could not keep them: {first_line(error, 160)}"


def fallback_note(path: Path) -> str:
    return _FALLBACKS.pop(str(Path(path).resolve()), "")


def output_count(model: Any, x: Any) -> int:
    """How many tensors the torch model returns (a tuple, a list, a dict or one tensor)."""
    import torch

    with torch.no_grad():
        out = model(x)
    if isinstance(out, dict):
        return len(out)
    return len(out) if isinstance(out, (tuple, list)) else 1


def names_fit(signature: Signature | None, n_outputs: int) -> bool:
    """The signature's names can be given to the artifact (one input, as many outputs as the model returns)."""
    return signature is not None and len(signature.inputs) == 1 and len(signature.outputs) == n_outputs


def record(model_signature: Signature | None, artifact_signature: Signature | None, note: str = "") -> dict[str, Any]:
    """An artifact record's `signature`: {"kept": bool, "why": one line}."""
    if model_signature is None:
        return {"kept": True, "why": ""}
    if artifact_signature is None:
        return {"kept": not model_signature.dynamic, "why": note or "the format records no signature"}
    kept, why = model_signature.compare(artifact_signature)
    if not kept and note:
        why = f"{why} ({note})"
    return {"kept": kept, "why": why}


def read(fmt: str, path: Path) -> Signature | None:
    """The signature an artifact file carries (ONNX, TFLite; a .pte's sidecar), None for formats without one."""
    from edgekit import sidecars, signature

    try:
        if fmt == "onnx":
            return signature.onnx_file_signature(path)
        if fmt == "tflite":
            return signature.from_tflite(path)
        if fmt == "pte":
            side = (sidecars.read(sidecars.pte(path)) or {}).get("signature")
            return Signature.from_dict(side) if side else None
    except Exception:  # an unreadable file is verify's to report, not this record's
        return None
    return None
