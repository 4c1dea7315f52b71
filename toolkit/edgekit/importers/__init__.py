"""Importers: model files written by other tools, made ready for the pipeline (ONNX from any exporter)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_import(bundle: Any, x: np.ndarray, data: str = "calibration") -> dict[str, Any] | None:
    """Checks an imported model against its original file in that file's own runtime; None for other models.

    See edgekit.importers.onnx.check_import.
    """
    info = getattr(bundle, "import_info", None)
    if not info:
        return None
    if info.get("format") == "onnx":
        from edgekit.importers.onnx_check import check_import as check_onnx

        return check_onnx(bundle, x, data)
    return None


def describe_import(info: dict[str, Any]) -> str:
    """One Markdown line for the report: what the file was, which passes applied, how the check came out."""
    passes = ", ".join(p["pass"] for p in info.get("passes", [])) or "none"
    line = (f"{info.get('format', '?').upper()} file from {info.get('producer') or 'an unnamed exporter'} (opset "
            f"{info.get('opset')}), {info.get('nodes_in_file')} -> {info.get('nodes_converted')} nodes; passes: {passes}")
    check = info.get("check")
    if check:
        agree = "" if check.get("top1_agreement") is None else f", top-1 agreement {check['top1_agreement']:.4g}"
        line += (f"; checked against {check['reference']} on {check['inputs']} {check['data']}: max abs error "
                 f"{check['max_abs_err']:.3g}{agree} ({'passed' if check['passed'] else 'FAILED'})")
    return line
