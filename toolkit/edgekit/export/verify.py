"""Runs an artifact in its own runtime and compares it with a reference on held-out inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.report import Verification
from edgekit.runtimes import load_runner
from edgekit.train import top1_agreement

# Float artifacts must match torch closely; producers of lossy artifacts (INT8) pass their own tolerance.
DEFAULT_TOLERANCE = {"max_abs_err": 1e-3, "relative": True, "min_top1": 0.98}


def run_artifact(path: Path, runtime: str, inputs: np.ndarray, threads: int = 1) -> tuple[np.ndarray, str]:
    """(outputs (N, -1), runtime name and version) of the artifact on `inputs`, one batch of its fixed size at a time
    (a ragged tail is dropped)."""
    runner = load_runner(runtime, path, threads)
    batch = runner.input_shape[0] if runner.input_shape else 1
    outs = []
    for i in range(0, len(inputs) - len(inputs) % batch, batch):
        outs.append(np.asarray(runner(inputs[i:i + batch])).reshape(batch, -1))
    return np.concatenate(outs), runner.runtime


def compare(got: np.ndarray, reference_logits: np.ndarray, runtime: str, tolerance: dict[str, Any] | None = None,
            reference: str = "torch") -> Verification:
    """The verification record of outputs `got` against the reference's logits on the same inputs."""
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    ref = reference_logits[: len(got)].reshape(len(got), -1)
    err = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    top1 = top1_agreement(got, ref)
    limit = tol["max_abs_err"]
    if limit is not None and tol.get("relative", True):
        limit = limit * max(scale, 1.0)
    passed = (limit is None or err <= limit) and top1 >= tol["min_top1"]
    return Verification(reference=reference, runtime=runtime, inputs=len(got), max_abs_err=err, max_abs_ref=scale,
                        top1_agreement=top1, tolerance={**tol, "max_abs_err_limit": limit}, passed=bool(passed))


def verify_artifact(path: Path, runtime: str, reference_logits: np.ndarray, inputs: np.ndarray, threads: int = 1,
                    tolerance: dict[str, Any] | None = None) -> Verification:
    """Runs `path` in `runtime` on held-out inputs and compares it with the reference model's logits.

    Args:
        path: the artifact.
        runtime: runtime module name that runs it.
        reference_logits: the reference model's outputs for `inputs` (N, ...).
        inputs: held-out inputs (N, C, H, W); run one batch of the artifact's fixed size at a time.
        tolerance: {"max_abs_err": float | None, "relative": bool, "min_top1": float}.
    """
    got, name = run_artifact(path, runtime, inputs, threads)
    return compare(got, reference_logits, name, tolerance)
