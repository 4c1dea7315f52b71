"""Runs an artifact in its own runtime and compares every output with a reference on held-out inputs, at the
calibration shape and, for dimensions the model leaves dynamic, at another shape (a batch of 2, a larger size).

An output's limit is relative to that output's own scale (max |reference|): a probability output whose values sit
around 1e-3 gets a limit near 1e-6, a logit output around 10 one near 1e-2. Top-1 agreement is checked only where
the output is a class vector (N, K), never on a flattened map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.report import Verification
from edgekit.runtimes import load_runner, run_outputs
from edgekit.train import top1_agreement

# Float artifacts must match torch closely; producers of lossy artifacts (INT8) pass their own tolerance.
DEFAULT_TOLERANCE = {"max_abs_err": 1e-3, "relative": True, "min_top1": 0.98}


def run_artifact(path: Path, runtime: str, inputs: Any, threads: int = 1) -> tuple[list[np.ndarray], str]:
    """(every output of the artifact on `inputs`, one batch of its own size at a time (a ragged tail is dropped);
    the runtime's name and version)."""
    runner = load_runner(runtime, path, threads)
    return run_outputs(runner, inputs), runner.runtime


def _as_list(outputs: Any) -> list[np.ndarray]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def output_errors(got: list[np.ndarray], ref: list[np.ndarray], tol: dict[str, Any],
                  names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per output: its largest error, the reference's scale and the limit (relative to that scale)."""
    rows = []
    for k, (g, r) in enumerate(zip(got, ref, strict=False)):
        n = min(len(g), len(r))
        g, r = np.asarray(g)[:n], np.asarray(r)[:n]
        name = names[k] if names and k < len(names) else f"output {k}"
        if g.size != r.size:
            rows.append({"name": name, "max_abs_err": None, "max_abs_ref": None, "limit": None, "passed": False,
                         "why": f"shape {list(g.shape)}, the reference's {list(r.shape)}"})
            continue
        g, r = g.reshape(r.shape).astype(np.float64), r.astype(np.float64)
        both_nan = np.isnan(g) & np.isnan(r)
        err = float(np.nan_to_num(np.where(both_nan, 0.0, np.abs(g - r)), nan=np.inf).max()) if r.size else 0.0
        scale = float(np.abs(np.nan_to_num(r)).max()) if r.size else 0.0
        limit = tol["max_abs_err"]
        if limit is not None and tol.get("relative", True):
            limit = limit * max(scale, 1e-6)
        rows.append({"name": name, "max_abs_err": err, "max_abs_ref": scale, "limit": limit,
                     "passed": bool(limit is None or err <= limit)})
    if len(got) != len(ref):
        rows.append({"name": "outputs", "max_abs_err": None, "max_abs_ref": None, "limit": None, "passed": False,
                     "why": f"{len(got)} outputs, the reference has {len(ref)}"})
    return rows


def class_vector(a: np.ndarray) -> bool:
    """A (N, K) output with K > 1: the one kind of output top-1 agreement means something for."""
    return a.ndim == 2 and a.shape[1] > 1


def compare(got: Any, reference: Any, runtime: str, tolerance: dict[str, Any] | None = None,
            reference_name: str = "torch", names: list[str] | None = None) -> Verification:
    """The verification record of outputs `got` against the reference's outputs on the same inputs (every output;
    one array stands for a model with one output)."""
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    got, ref = _as_list(got), _as_list(reference)
    rows = output_errors(got, ref, tol, names)
    first = next((r for r in rows if r["max_abs_err"] is not None), None)
    n = len(got[0]) if got else 0
    top1 = None
    if got and ref:
        g0, r0 = np.asarray(got[0])[:n], np.asarray(ref[0])[:n]
        if class_vector(r0) and g0.size == r0.size:
            top1 = top1_agreement(g0, r0)
    passed = all(r["passed"] for r in rows) and (top1 is None or tol.get("min_top1") is None or top1 >= tol["min_top1"])
    return Verification(reference=reference_name, runtime=runtime, inputs=n,
                        max_abs_err=max((r["max_abs_err"] for r in rows if r["max_abs_err"] is not None), default=0.0),
                        max_abs_ref=first["max_abs_ref"] if first else 0.0,
                        top1_agreement=top1,
                        tolerance={**tol, "max_abs_err_limit": first["limit"] if first else None},
                        passed=bool(passed), outputs=rows if len(rows) > 1 or names else None)


def other_shape(x: np.ndarray, dynamic_axes: tuple[int, ...]) -> np.ndarray | None:
    """Inputs at another shape for the dynamic axes of a (single) input: a batch of 2 for a dynamic batch, and each
    other dynamic dimension about a quarter larger (a multiple of 32 from 32 up, as strided models need), padded
    with the edge values of the data; None when nothing is dynamic."""
    if not dynamic_axes or not isinstance(x, np.ndarray) or x.ndim < 2:
        return None
    x2 = x[:2] if 0 in dynamic_axes else x[:1]
    if len(x2) < (2 if 0 in dynamic_axes else 1):
        x2 = np.concatenate([x2, x2])
    pad = [(0, 0)] * x2.ndim
    for a in dynamic_axes:
        if a == 0 or a >= x2.ndim:
            continue
        size = x2.shape[a]
        bigger = int(np.ceil(size * 1.25 / 32) * 32) if size >= 32 else size + 8
        pad[a] = (0, bigger - size)
    return np.pad(x2, pad, mode="edge") if any(p != (0, 0) for p in pad) else x2


def check_shape(path: Path, runtime: str, x: np.ndarray, reference: Any, tolerance: dict[str, Any] | None = None,
                threads: int = 1, names: list[str] | None = None) -> dict[str, Any]:
    """Runs the artifact on `x` in one call (its batch and sizes as given) and compares every output with
    `reference(x)` (a callable giving every output); {"shape", "max_abs_err", "passed"[, "why"]}."""
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    shape = list(x.shape)
    try:
        ref = _as_list(reference(x))
    except Exception as e:  # noqa: BLE001 - the reference cannot run that shape: nothing to compare with
        from edgekit.errors import first_line

        return {"shape": shape, "passed": None, "why": f"the reference cannot run it: {first_line(e, 160)}"}
    try:
        got = load_runner(runtime, path, threads).outputs(x)
    except Exception as e:  # noqa: BLE001 - the artifact refuses a shape its signature says it takes
        from edgekit.errors import first_line

        return {"shape": shape, "passed": False, "why": f"the artifact cannot run it: {first_line(e, 160)}"}
    rows = output_errors(got, ref, tol, names)
    bad = next((r for r in rows if not r["passed"]), None)
    return {"shape": shape, "max_abs_err": max((r["max_abs_err"] for r in rows if r["max_abs_err"] is not None),
                                               default=0.0),
            "passed": bad is None, **({"why": bad.get("why") or f"{bad['name']}: max abs error "
                                                               f"{bad['max_abs_err']:.3g} > {bad['limit']:.3g}"}
                                      if bad else {})}


def verify_artifact(path: Path, runtime: str, reference: Any, inputs: Any, threads: int = 1,
                    tolerance: dict[str, Any] | None = None) -> Verification:
    """Runs `path` in `runtime` on held-out inputs and compares it with the reference model's outputs.

    Args:
        path: the artifact.
        runtime: runtime module name that runs it.
        reference: the reference model's outputs for `inputs` (a list, one per output, or one array).
        inputs: held-out inputs (N, ...), run one batch of the artifact's own size at a time.
        tolerance: {"max_abs_err": float | None, "relative": bool, "min_top1": float}.
    """
    got, name = run_artifact(path, runtime, inputs, threads)
    return compare(got, reference, name, tolerance)
