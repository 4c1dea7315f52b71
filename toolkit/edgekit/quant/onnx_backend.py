"""ONNX backend: applies a Policy with onnxruntime.quantization (static, QDQ format).

Float layers go to `nodes_to_exclude`; per-channel layers get a per-tensor override with a channel axis
(TensorQuantOverrides), every other quantised layer is per-tensor. Activation ranges are calibrated once per method
and cached (ORT's `calibration_cache_path`), so a search pays for calibration once, not once per candidate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.fileio import atomic_path, fingerprint, sha256_file
from edgekit.progress import quiet_output
from edgekit.quant.policy import FLOAT, INT8_CHANNEL, Layer, Policy

NAME = "onnxruntime"
FORMAT = "onnx"
RUNTIME = "onnxruntime"
CALIBRATIONS = ("minmax", "percentile", "entropy")
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def list_layers(model_path: str | Path) -> list[Layer]:
    """Quantisable layers (Conv / Gemm / MatMul with a constant weight) in graph order."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = node.input[1]
        name = w[: -len(".weight")] if w.endswith(".weight") else (node.name or w)
        layers.append(Layer(name=name, op_type=node.op_type, params=int(np.prod(inits[w].dims)), node=node.name,
                            weight=w))
    return layers


def _channel_axis(model_path: Path, layer: Layer) -> int:
    if layer.op_type == "MatMul":
        return 1  # B is (in, out)
    if layer.op_type == "Gemm":
        import onnx

        node = next(n for n in onnx.load(str(model_path), load_external_data=False).graph.node
                    if n.name == layer.node)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0  # Conv weights are (out, in, kh, kw)


class _Reader:
    """CalibrationDataReader over a numpy batch, one sample at a time (the exported graphs have batch 1)."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int) -> None:
        self.items = [{input_name: np.ascontiguousarray(x[i:i + batch], np.float32)}
                      for i in range(0, len(x) - len(x) % batch, batch)]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.items = self.items[start_index:end_index]


class OnnxQuantizer:
    """Quantises one float ONNX model under many policies.

    Args:
        float_path: the float model (batch size fixed by the export).
        calib_x: calibration inputs (N, C, H, W), from the training split.
        workdir: where calibration caches go.
    """

    def __init__(self, float_path: str | Path, calib_x: np.ndarray, workdir: str | Path) -> None:
        import onnxruntime as ort

        self.float_path = Path(float_path)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.layers = list_layers(self.float_path)
        self._axes = {la.name: _channel_axis(self.float_path, la) for la in self.layers}
        sess = ort.InferenceSession(str(self.float_path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        self.input_name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
        self.calib_x = calib_x
        # The cache must never outlive the model or the data it was computed on.
        self._cache_id = fingerprint(sha256_file(self.float_path), hashlib.sha256(np.ascontiguousarray(calib_x)).hexdigest())

    def apply(self, policy: Policy, out_path: str | Path) -> Path:
        """Writes the quantised model for `policy` to out_path (atomically)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if policy.calibration not in CALIBRATIONS:
            raise EdgekitError(f"ONNX backend: calibration '{policy.calibration}' is not offered by ONNX Runtime; "
                               f"use one of {list(CALIBRATIONS)}")
        out_path = Path(out_path)
        by_name = {la.name: la for la in self.layers}
        unknown = sorted(set(policy.layers) - set(by_name))
        if unknown:
            raise EdgekitError(f"policy names layers the model lacks: {unknown[:5]}")
        exclude = [la.node for la in self.layers if policy.mode(la.name) == FLOAT]
        overrides = {by_name[n].weight: [{"axis": self._axes[n]}] for n, m in policy.layers.items()
                     if m == INT8_CHANNEL}
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[policy.calibration]
        cache = self.workdir / f"calib-{policy.calibration}-{self._cache_id}.json"
        extra = {"ActivationSymmetric": policy.symmetric_activations, "WeightSymmetric": True,
                 "TensorQuantOverrides": overrides}
        if policy.calibration == "percentile":
            extra["CalibPercentile"] = 99.99
        with atomic_path(out_path) as tmp, quiet_output():
            tmp_onnx = tmp.with_suffix(".onnx")
            quantize_static(str(self.float_path), str(tmp_onnx),
                            _Reader(self.input_name, self.calib_x, self.batch), quant_format=QuantFormat.QDQ,
                            per_channel=False, reduce_range=False, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=method,
                            extra_options=extra, calibration_cache_path=str(cache))
            tmp_onnx.replace(tmp)
        return out_path
