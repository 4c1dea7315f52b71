"""NNCF backend: post-training quantisation of the ONNX model, float layers as NNCF's ignored scope.

NNCF chooses the weight granularity itself (per-channel for convolutions and matmuls), so a policy's per-tensor /
per-channel distinction is not applied here: every quantised layer gets NNCF's choice, and `applied()` says so.
Calibration: "minmax" (RangeEstimatorParametersSet.MINMAX), "percentile" (MEAN_QUANTILE), or NNCF's own default
range estimation via `default_int8()`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, first_line
from edgekit.fileio import atomic_path
from edgekit.progress import quiet_output
from edgekit.quant.onnx_backend import list_layers
from edgekit.quant.policy import FLOAT, Policy

NAME = "nncf"
FORMAT = "onnx"
RUNTIME = "onnxruntime"
CALIBRATIONS = ("minmax", "percentile")


class NncfQuantizer:
    """Quantises one float ONNX model with nncf.quantize under many policies.

    Args:
        float_path: the float ONNX model.
        calib_x: calibration inputs (N, C, H, W).
    """

    APPLY_IN_CHILD = True  # apply keeps nothing on self: it runs in a child process (edgekit.quant.evaluate)

    def __init__(self, float_path: str | Path, calib_x: np.ndarray, workdir: str | Path | None = None) -> None:
        import onnx

        self.float_path = Path(float_path)
        self.model = onnx.load(str(self.float_path))
        self.input_name = self.model.graph.input[0].name
        dims = self.model.graph.input[0].type.tensor_type.shape.dim
        self.batch = dims[0].dim_value or 1
        self.calib_x = calib_x.astype(np.float32)
        self.layers = list_layers(self.float_path)

    def _dataset(self):  # noqa: ANN202
        import nncf

        b = self.batch
        items = [self.calib_x[i:i + b] for i in range(0, len(self.calib_x) - len(self.calib_x) % b, b)]
        return nncf.Dataset(items, lambda x: {self.input_name: x})

    def apply(self, policy: Policy, out_path: str | Path) -> Path:
        """Quantises with the policy's float layers ignored and its calibration method."""
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        if policy.calibration not in CALIBRATIONS:
            raise EdgekitError(f"NNCF backend: calibration '{policy.calibration}' is not offered; "
                               f"use one of {list(CALIBRATIONS)}")
        ranges = (RangeEstimatorParametersSet.MINMAX if policy.calibration == "minmax"
                  else RangeEstimatorParametersSet.MEAN_QUANTILE)
        advanced = AdvancedQuantizationParameters(activations_range_estimator_params=ranges)
        return self._quantize(policy, out_path, advanced)

    def default_int8(self, out_path: str | Path) -> Path:
        """NNCF's default INT8 (every layer, NNCF's own presets and range estimation)."""
        return self._quantize(Policy(), out_path, None)

    def applied(self, policy: Policy) -> str:
        return ("NNCF picks weight granularity itself (per-channel); float layers are its ignored scope: "
                f"{len(policy.float_layers())} of {len(self.layers)}")

    def _quantize(self, policy: Policy, out_path: str | Path, advanced: object) -> Path:
        import nncf
        import onnx

        by_name = {la.name: la for la in self.layers}
        unknown = sorted(set(policy.layers) - set(by_name))
        if unknown:
            raise EdgekitError(f"policy names layers the model lacks: {unknown[:5]}")
        ignored = [by_name[n].node for n, m in policy.layers.items() if m == FLOAT]
        kwargs = {"advanced_parameters": advanced} if advanced is not None else {}
        nncf.set_log_level(logging.ERROR)
        try:
            with quiet_output():  # NNCF draws progress bars on the terminal
                q = nncf.quantize(self.model, self._dataset(), subset_size=len(self.calib_x),
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False), **kwargs)
        except Exception as e:
            raise EdgekitError(f"NNCF quantisation failed: {first_line(e)}") from None
        out_path = Path(out_path)
        with atomic_path(out_path) as tmp:
            onnx.save(q, str(tmp))
        return out_path
