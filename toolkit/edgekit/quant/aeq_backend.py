"""LiteRT Quantizer backend (ai-edge-quantizer): applies a Policy to a FLOAT .tflite FILE, no torch in the loop.

A policy becomes the quantizer's recipe, which is plain data: one entry for every op (static INT8, the policy's most
common mode), then one entry per policy layer whose regex matches exactly that op's scope (its output tensor names,
as the quantizer defines scopes; the last matching entry wins): `no_quantize` for a float layer, TENSORWISE or
CHANNELWISE weights for an INT8 one. Activation ranges are calibrated once, on the float model, and reused by every
policy (they do not depend on which layers are quantised).

Layers are named by their weight tensor in the file (e.g. "sequential/conv2d/Conv2D" from Keras), since a .tflite
file carries no torch module names.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, InputError, first_line
from edgekit.fileio import atomic_path
from edgekit.progress import quiet_output
from edgekit.quant.policy import FLOAT, INT8_CHANNEL, Layer, Policy

NAME = "ai-edge-quantizer"
FORMAT = "tflite"
RUNTIME = "litert"
# The quantizer calibrates activation ranges by min/max only (its MSE/OCTAV algorithms choose weight ranges).
CALIBRATIONS = ("minmax",)
# TFLite op -> edgekit op type; the weight is input 1 of each (TRANSPOSE_CONV: output_shape, weights, input, bias).
WEIGHT_OPS = {"CONV_2D": "Conv", "DEPTHWISE_CONV_2D": "Conv", "CONV_2D_TRANSPOSE": "Conv",
              "FULLY_CONNECTED": "Gemm"}


def _read(model_path: str | Path | bytes | bytearray) -> Any:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    if isinstance(model_path, (bytes, bytearray)):
        return fu.read_model(bytearray(model_path))
    model_path = Path(model_path)
    if not model_path.is_file():
        raise InputError(f"model file not found: {model_path}")
    try:
        return fu.read_model(bytearray(model_path.read_bytes()))
    except Exception as e:
        raise InputError(f"{model_path} is not a readable .tflite model ({first_line(e)}); is the file "
                         "complete?") from None


def list_layers(model_path: str | Path | bytes | bytearray) -> list[Layer]:
    """Quantisable layers (conv, depthwise conv, transposed conv, fully connected with a constant weight) of the
    main subgraph, in op order. Layer.node is the op's scope, Layer.weight its weight tensor's name."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgekit.importers.tflite_file import builtin_code

    model = _read(model_path)
    if not fu.is_float_model(model):
        name = "the model" if isinstance(model_path, (bytes, bytearray)) else str(model_path)
        raise InputError(f"{name} is already quantised; the LiteRT Quantizer backend takes a float .tflite")
    graph = model.subgraphs[0]
    layers, seen = [], collections.Counter()
    for op in graph.operators:
        op_name = fu.TFL_OP_CODE_TO_NAME.get(builtin_code(model.operatorCodes[op.opcodeIndex]))
        kind = WEIGHT_OPS.get(getattr(op_name, "value", op_name))
        if kind is None or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        weight = graph.tensors[op.inputs[1]]
        if fu.get_tensor_data(weight, model.buffers) is None:
            continue  # a weight computed at run time is no weight to quantise
        wname = fu.get_tensor_name(weight).rstrip(";") or f"op{len(layers)}"
        seen[wname] += 1
        name = wname if seen[wname] == 1 else f"{wname}#{seen[wname]}"
        layers.append(Layer(name=name, op_type=kind, params=int(np.prod(weight.shape)),
                            node=fu.get_op_scope(op, graph.tensors), weight=fu.get_tensor_name(weight)))
    return layers


def _int8(mode: str, symmetric_activations: bool) -> dict[str, Any]:
    return {"activation_tensor_config": {"num_bits": 8, "symmetric": symmetric_activations,
                                         "granularity": "TENSORWISE", "dtype": "INT"},
            "weight_tensor_config": {"num_bits": 8, "symmetric": True, "dtype": "INT",
                                     "granularity": "CHANNELWISE" if mode == INT8_CHANNEL else "TENSORWISE"},
            "compute_precision": "INTEGER", "explicit_dequantize": False, "skip_checks": False,
            "min_weight_elements": 0}


def policy_recipe(policy: Policy, layers: list[Layer]) -> list[dict[str, Any]]:
    """The quantizer's recipe (JSON-able list of entries) for a policy."""
    modes = [m for m in policy.layers.values() if m != FLOAT]
    recipe = []
    if modes:
        # Ops of no policy layer (pooling, add, reshape ...) follow the most common INT8 mode, so that an INT8
        # layer is not wrapped in quantize/dequantize pairs.
        common = collections.Counter(modes).most_common(1)[0][0]
        recipe.append({"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
                       "op_config": _int8(common, policy.symmetric_activations)})
    for la in layers:
        mode = policy.mode(la.name)
        entry: dict[str, Any] = {"regex": f"^{re.escape(la.node)}$", "operation": "*"}
        if mode == FLOAT:
            entry["algorithm_key"] = "no_quantize"
        else:
            entry.update(algorithm_key="min_max_uniform_quantize", op_config=_int8(mode, policy.symmetric_activations))
        recipe.append(entry)
    return recipe


class AeqQuantizer:
    """Quantises one float .tflite file under many policies with the LiteRT Quantizer.

    Args:
        float_path: the float .tflite (its input shape fixes the batch).
        calib_x: calibration inputs (N, ...) in the file's input layout, from the training split.
        workdir: unused (the calibration is kept in memory); accepted for the common backend signature.
    """

    def __init__(self, float_path: str | Path, calib_x: np.ndarray, workdir: str | Path | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from edgekit.importers import tflite_file

        self.float_path = Path(float_path)
        list_layers(self.float_path)  # one line for a missing, truncated or already quantised file
        content = self.float_path.read_bytes()
        # The quantizer works per signature: a file without one gets one from its subgraph's inputs and outputs,
        # and the quantised files lose it again (they look like the file they came from). Float16 weights that
        # DEQUANTIZE on load become float32 constants, so that the quantizer sees weights.
        prepared, self.added_signature, self.fp16_weights = tflite_file.for_quantizer(content)
        self._float_bytes = bytearray(prepared)
        self.layers = list_layers(self._float_bytes)
        interpreter = Interpreter(model_content=bytes(self._float_bytes))
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            raise InputError(f"{self.float_path}: the LiteRT Quantizer backend needs exactly one signature, "
                             f"found {sorted(signatures)}")
        self.signature, spec = next(iter(signatures.items()))
        if len(spec["inputs"]) != 1:
            raise InputError(f"{self.float_path}: edgekit supports models with one input; signature "
                             f"'{self.signature}' has {len(spec['inputs'])}")
        self.input_name = spec["inputs"][0]
        self.input_shape = tuple(int(d) for d in interpreter.get_input_details()[0]["shape"])
        self.calib_x = np.asarray(calib_x, np.float32)
        self._qsvs: dict[str, Any] | None = None

    def _samples(self) -> list[dict[str, np.ndarray]]:
        batch = self.input_shape[0]
        x = self.calib_x
        return [{self.input_name: np.ascontiguousarray(x[i:i + batch]).reshape(self.input_shape)}
                for i in range(0, len(x) - len(x) % batch, batch)]

    def _calibration(self) -> dict[str, Any]:
        """Activation ranges of every tensor of the float model, computed once for all policies."""
        if self._qsvs is None:
            from ai_edge_quantizer import quantizer

            full = Policy.uniform(self.layers, INT8_CHANNEL)
            q = quantizer.Quantizer(self._float_bytes, policy_recipe(full, self.layers))
            with quiet_output():
                self._qsvs = q.calibrate({self.signature: self._samples()}, num_threads=1)
        return self._qsvs

    def apply(self, policy: Policy, out_path: str | Path) -> Path:
        """Writes the quantised .tflite for `policy` to out_path (atomically)."""
        from ai_edge_quantizer import quantizer

        if policy.calibration not in CALIBRATIONS:
            raise EdgekitError(f"LiteRT Quantizer backend: calibration '{policy.calibration}' is not offered; use "
                               f"one of {list(CALIBRATIONS)}")
        unknown = sorted(set(policy.layers) - {la.name for la in self.layers})
        if unknown:
            raise EdgekitError(f"policy names layers the model lacks: {unknown[:5]}")
        try:
            q = quantizer.Quantizer(self._float_bytes, policy_recipe(policy, self.layers))
            calibration = self._calibration() if q.need_calibration else None
            with quiet_output():
                result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
        except EdgekitError:
            raise
        except Exception as e:
            raise EdgekitError(f"LiteRT Quantizer failed on {self.float_path.name}: {first_line(e)}") from None
        content = bytes(result.quantized_model)
        if self.added_signature:
            from edgekit.importers.tflite_file import without_signature

            content = without_signature(content)
        with atomic_path(Path(out_path)) as tmp:
            tmp.write_bytes(content)
        return Path(out_path)
