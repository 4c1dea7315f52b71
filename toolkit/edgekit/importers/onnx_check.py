"""The check of an ONNX import: the converted torch model against the ORIGINAL file in ONNX Runtime.

Where ONNX Runtime no longer implements a file's old opsets, the reference is onnx.reference (the ONNX spec's own
Python implementation), still on the original file. A file fixed at batch N runs at batch N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit import child
from edgekit.errors import InputError

# Converted-vs-ORT tolerance: float32 kernels differ in summation order, nothing more is expected.
ATOL = 1e-4
RTOL = 1e-3


class ImportCheckError(InputError):
    """The converted torch model disagrees with ONNX Runtime running the original file."""


def check_import(bundle: Any, x: np.ndarray, data: str = "calibration") -> dict[str, Any] | None:
    """Runs the converted model and ONNX Runtime on the ORIGINAL file over `x`; records and enforces agreement.

    Args:
        bundle: a ModelBundle from zoo.load_model; models that were not imported from ONNX are left alone.
        x: inputs (N, ...) in the model's layout, e.g. DataBundle.calibration().
        data: what `x` is, for the record ("calibration split of lines.npz").

    Returns:
        The check record (also stored as bundle.import_info["check"]), or None for other models.

    Raises:
        ImportCheckError: the largest difference exceeds ATOL + RTOL * max|reference|.
    """
    info = getattr(bundle, "import_info", None)
    if not info or info.get("format") != "onnx":
        return None
    import torch

    from edgekit.train import top1_agreement

    x = np.ascontiguousarray(x, np.float32)
    # big files: ONNX Runtime's session (the weights once more) in a child process that exits (edgekit.child)
    file = Path(info["file"])
    isolated = child.for_size(file.stat().st_size)
    ref, reference = isolated("ONNX Runtime's run of the original file", _reference_outputs, file,
                              info["input"]["name"], x, info["input"].get("batch_in_file") or 1)
    with torch.no_grad():
        if (info.get("batch") or {}).get("whole_batches"):  # as the pipeline runs it: whole batches (a few MB each)
            from edgekit.train import batch_for

            step = batch_for(x, 256)
            got = np.concatenate([_first_output(bundle.module(torch.as_tensor(x[i:i + step])))
                                  for i in range(0, len(x), step)])
        else:
            got = np.stack([_first_output(bundle.module(torch.as_tensor(x[i:i + 1])))[0] for i in range(len(x))])
    if ref.shape != got.shape:
        raise ImportCheckError(f"{info['file']}: the torch conversion returns shape {list(got.shape[1:])}, ONNX "
                               f"Runtime {list(ref.shape[1:])}")
    # NaN where the file itself gives NaN (e.g. sqrt of a negative input) agrees; NaN anywhere else does not.
    both_nan = np.isnan(ref) & np.isnan(got)
    diff = np.where(both_nan, 0.0, np.abs(ref.astype(np.float64) - got))
    err = float(np.max(np.nan_to_num(diff, nan=np.inf))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref), initial=0.0, where=~np.isnan(ref))) if ref.size else 0.0
    tol = ATOL + RTOL * scale
    # Top-1 per sample for (N, classes) outputs, per position for (N, steps, classes) sequence outputs (OCR
    # recognisers); other outputs (maps, embeddings) have no top-1 and rely on the error alone.
    agreement = (top1_agreement(got.reshape(-1, got.shape[-1]), ref.reshape(-1, ref.shape[-1]))
                 if ref.ndim in (2, 3) and ref.shape[-1] > 1 else None)
    record = {"reference": reference, "inputs": len(x), "data": data,
              "max_abs_err": err, "max_abs_ref": scale, "tolerance": tol,
              "top1_agreement": agreement, "passed": bool(err <= tol)}
    info["check"] = record
    if not record["passed"]:
        agree = "" if agreement is None else f", top-1 agreement {agreement:.3f}"
        batch = info["input"].get("batch_in_file")
        hint = (f"; the file fixes batch {batch} and its graph may depend on it (edgekit runs graphs at batch 1)"
                if batch not in (None, 1) else "")
        raise ImportCheckError(f"{info['file']}: the torch conversion disagrees with {reference.split(' on ')[0]} "
                               f"running the original file (max abs error {err:.3g} > tolerance {tol:.3g}{agree}, "
                               f"{len(x)} {data} inputs){hint}")
    return record


def _reference_runner(path: Path, input_name: str) -> tuple[Any, str]:
    """ONNX Runtime on the original file; where ORT no longer implements the file's old opsets, the ONNX reference
    implementation (onnx.reference, written from the spec, every opset) on the original file."""
    from edgekit.runtimes.onnxruntime import OrtRunner

    try:
        runner = OrtRunner(path, 1, input_name=input_name)
        return runner, f"{runner.runtime} on {path}"
    except InputError as e:
        ort_error = str(e).rpartition(": ")[2]
    from onnx.reference import ReferenceEvaluator

    return (_Evaluator(ReferenceEvaluator(str(path)), input_name),
            f"onnx.reference on {path} (ONNX Runtime cannot run it: {ort_error[:120]})")


class _Evaluator:
    """onnx.reference with a runner's interface (one array: the named input; a dict: every input)."""

    def __init__(self, evaluator: Any, input_name: str) -> None:
        self.evaluator, self.input_name = evaluator, input_name

    def outputs(self, x: Any) -> list[np.ndarray]:
        return self.evaluator.run(None, x if isinstance(x, dict) else {self.input_name: x})

    def __call__(self, x: Any) -> np.ndarray:
        return self.outputs(x)[0]


def run_outputs_at_batch(runner: Any, x: Any, batch: int) -> list[np.ndarray]:
    """Every output per input of a file whose batch may be fixed at `batch` (the last group is padded by
    repetition); an `Inputs` runs feed by feed."""
    from edgekit.data import Inputs
    from edgekit.runtimes import run_outputs

    if isinstance(x, Inputs):
        return run_outputs(runner, x)
    per_group = []
    for i in range(0, len(x), batch):
        group = x[i:i + batch]
        real = len(group)
        if real < batch:
            group = np.concatenate([group, np.repeat(group[-1:], batch - real, axis=0)])
        per_group.append([np.asarray(o)[:real] if np.asarray(o).ndim else np.asarray(o).reshape(1)
                          for o in runner.outputs(group)])
    return [np.concatenate([g[k] for g in per_group]) for k in range(len(per_group[0]))]


def _reference_outputs(path: Path, input_name: str, x: np.ndarray, batch: int) -> tuple[np.ndarray, str]:
    """ONNX Runtime's first output for `x` on the original file, and what ran it."""
    runner, reference = _reference_runner(path, input_name)
    return _run_at_batch(runner, x, batch), reference


def _run_at_batch(runner: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """Outputs per input of a file whose batch may be fixed at `batch` (the last group is padded by repetition)."""
    rows = []
    for i in range(0, len(x), batch):
        group = x[i:i + batch]
        real = len(group)
        if real < batch:
            group = np.concatenate([group, np.repeat(group[-1:], batch - real, axis=0)])
        rows.append(np.asarray(runner(group))[:real])
    return np.concatenate(rows)


def _first_output(out: Any) -> np.ndarray:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().numpy()
