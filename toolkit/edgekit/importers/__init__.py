"""Importers: model files written by other tools, made ready for the pipeline (ONNX from any exporter)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_import(bundle: Any, x: np.ndarray, data: str = "calibration") -> dict[str, Any] | None:
    """Checks an imported model against its original file in that file's own runtime; None for other models.

    See edgekit.importers.onnx.check_import.
    """
    info = getattr(bundle, "import_info", None)
    if not info or getattr(bundle, "without_torch", None) is not None:
        return None  # no torch model (the native routes): the file itself is what runs
    if info.get("format") == "onnx":
        from edgekit.importers.onnx_check import check_import as check_onnx

        return check_onnx(bundle, x, data)
    return None
