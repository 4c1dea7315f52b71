"""ONNX backend: applies a Policy with onnxruntime.quantization (static, QDQ format).

Float layers go to `nodes_to_exclude`; per-channel layers get a per-tensor override with a channel axis
(TensorQuantOverrides), every other quantised layer is per-tensor. Activation ranges are calibrated once per method
and cached (ORT's `calibration_cache_path`), so a search pays for calibration once, not once per candidate.

The float model is prepared once before any policy is applied (`prepare`): its opset raised to 13 where it is older
(ONNX Runtime's quantiser writes per-channel DequantizeLinear nodes, which need 13), then ONNX Runtime's own
pre-processing (shape inference, constant folding, BatchNormalization folded into convolutions). Graphs written by
other exporters keep weights and biases in Constant nodes; the quantiser leaves those layers' biases float, and the
INT8 model then runs slower than the float one (PP-OCRv4's detector: 0.92x unprepared, 1.55x prepared, this
machine). Every candidate keeps the float file's inputs, outputs, dynamic dimensions and metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """CalibrationDataReader over a numpy batch, one batch of the graph's own size at a time (an `Inputs`: one
    feed of every input per row)."""

    def __init__(self, input_name: str, x: Any, batch: int) -> None:
        from edgekit.data import Inputs

        if isinstance(x, Inputs):
            self.all = [x.row(i) for i in range(len(x))]
        else:
            self.all = [{input_name: np.ascontiguousarray(x[i:i + batch], np.float32)}
                        for i in range(0, len(x) - len(x) % batch, batch)]
        self.items = self.all
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
        self.items, self.i = self.all[start_index:end_index], 0


class OnnxQuantizer:
    """Quantises one float ONNX model under many policies.

    Args:
        float_path: the float model (batch size fixed by the export).
        calib_x: calibration inputs (N, C, H, W), from the training split.
        workdir: where calibration caches go.
    """

    APPLY_IN_CHILD = True  # apply keeps nothing on self: it runs in a child process (edgekit.quant.evaluate)

    def __init__(self, float_path: str | Path, calib_x: np.ndarray, workdir: str | Path) -> None:
        import onnxruntime as ort

        self.source_path = Path(float_path)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.float_path, self.prepared = prepare(self.source_path, self.workdir)
        self.layers = list_layers(self.float_path)
        self._axes = {la.name: _channel_axis(self.float_path, la) for la in self.layers}
        sess = ort.InferenceSession(str(self.float_path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        self.input_name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
        self.calib_x = calib_x
        # The cache must never outlive the model or the data it was computed on.
        self._cache_id = fingerprint(sha256_file(self.float_path), hashlib.sha256(calib_x.tobytes() if hasattr(
            calib_x, "tobytes") else np.ascontiguousarray(calib_x)).hexdigest())

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
        reader = _Reader(self.input_name, self.calib_x, self.batch)
        # Calibration keeps every tensor of every input it ran until it reduces them: in strides of a few inputs
        # (one for big inputs), PP-OCRv4's detector at 736x992 stays within a few GB instead of 20+.
        extra = {"ActivationSymmetric": policy.symmetric_activations, "WeightSymmetric": True,
                 "TensorQuantOverrides": overrides, "CalibStridedMinMax": calibration_stride(self.calib_x, len(reader))}
        if policy.calibration == "percentile":
            extra["CalibPercentile"] = 99.99
        with atomic_path(out_path) as tmp, quiet_output(), _as_edgekit_error(f"{policy.calibration} calibration"), \
                _lean_calibration_session():
            tmp_onnx = tmp.with_suffix(".onnx")
            quantize_static(str(self.float_path), str(tmp_onnx), reader, quant_format=QuantFormat.QDQ,
                            per_channel=False, reduce_range=False, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=method,
                            extra_options=extra, calibration_cache_path=str(cache))
            keep_metadata(self.source_path, tmp_onnx)
            tmp_onnx.replace(tmp)
        return out_path


@contextlib.contextmanager
def _lean_calibration_session() -> Iterator[None]:
    """ONNX Runtime's calibrator runs a copy of the model with a ReduceMin and a ReduceMax on every tensor. In its
    default execution order the reductions run late, every tensor stays alive until then, and the memory pattern
    plans for all of them at once: 2.6 GB resident for PP-OCRv4's detector at 736x992 (its float session: 0.2 GB).
    Priority-based order runs each reduction after its tensor is made: 0.26 GB, the same ranges and the same file
    (tests/test_quant.py). quantize_static takes no session options, so its calibrator's session is made here."""
    import onnxruntime as ort
    from onnxruntime.quantization import calibrate

    original = calibrate.CalibraterBase.create_inference_session

    def create_inference_session(self: Any) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ONNX Runtime's own
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        so.enable_mem_pattern = False
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=so,
                                                  providers=self.execution_providers)

    calibrate.CalibraterBase.create_inference_session = create_inference_session
    try:
        yield
    finally:
        calibrate.CalibraterBase.create_inference_session = original


@contextlib.contextmanager
def _as_edgekit_error(what: str) -> Iterator[None]:
    """ONNX Runtime's quantiser raises what its parts raise (a histogram of a constant tensor: ValueError): one
    line naming the step, so a search drops the candidate and goes on."""
    try:
        yield
    except EdgekitError:
        raise
    except Exception as e:  # noqa: BLE001
        from edgekit.errors import first_line

        raise EdgekitError(f"ONNX Runtime's quantiser failed ({what}): {type(e).__name__}: {first_line(e, 200)}"
                           ) from None


def calibration_stride(x: Any, n: int) -> int:
    """Inputs per calibration stride: a divisor of n, one for inputs above a megabyte, else up to eight."""
    per_input = (x.nbytes if hasattr(x, "nbytes") else np.asarray(x).nbytes) / max(len(x), 1)
    limit = 1 if per_input > 2 ** 20 else 8
    return max(d for d in range(1, limit + 1) if n % d == 0) if n else 1


def prepare(path: Path, workdir: Path) -> tuple[Path, list[str]]:
    """(the float model the policies are applied to, what was done to it): opset 13 at least, then ONNX Runtime's
    quantisation pre-processing. A step that fails is skipped (the file as it was goes on), never fatal."""
    import onnx

    from edgekit.errors import first_line

    done: list[str] = []
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    current = path
    if opset < 13:
        try:
            from onnx import version_converter

            model = version_converter.convert_version(model, 13)
            current = workdir / "float-opset13.onnx"
            onnx.save(model, str(current))
            done.append(f"opset {opset} -> 13")
        except Exception as e:  # noqa: BLE001 - quantised as it is; ORT says so if it cannot
            done.append(f"opset {opset} kept (conversion failed: {first_line(e, 120)})")
    # Graph inputs that carry an initializer (the Caffe2-era `*_SHAPE` inputs) are constants to the application; the
    # pre-processing and the calibrator would ask for them in every feed. (IR 4 lets an initializer be no input.)
    inits = {i.name for i in model.graph.initializer}
    fed = [i for i in model.graph.input if i.name in inits]
    if fed:
        for i in fed:
            model.graph.input.remove(i)
        model.ir_version = max(model.ir_version, 4)
        current = workdir / "float-constants.onnx"
        onnx.save(model, str(current))
        done.append(f"{len(fed)} inputs with initializers kept as constants")
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        out = workdir / "float-prepared.onnx"
        with quiet_output():
            quant_pre_process(str(current), str(out), skip_symbolic_shape=True)
        keep_metadata(path, out)
        return out, [*done, "ONNX Runtime pre-processing (constants folded, BatchNormalization folded)"]
    except Exception as e:  # noqa: BLE001
        return current, [*done, f"no pre-processing ({first_line(e, 120)})"]


def keep_metadata(source: Path, target: Path) -> None:
    """The source file's metadata (e.g. a recogniser's alphabet), which clients read, on a quantised file."""
    import onnx

    src = onnx.load(str(source), load_external_data=False)
    if not src.metadata_props:
        return
    out = onnx.load(str(target))
    have = {p.key for p in out.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            out.metadata_props.add(key=p.key, value=p.value)
    onnx.save(out, str(target))
