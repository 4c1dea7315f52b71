"""Models that stay in their own file format: the ONNX-native and TFLite-native routes.

An ONNX file that cannot become a torch model (an operator onnx2torch lacks, or a conversion that the check against
ONNX Runtime refuses) and any `.tflite` file are still compressed: the stages that need no torch model (check,
baseline, INT8 policy search, export of the file's own format, verify, measure) run on the file, and the stages
that need one (prune, sparsify, adapt, decompose, TFLite export of an ONNX file ...) are refused before anything runs,
in one line that says what blocked the torch route.

A `NativeModel` is what those stages see in place of a torch module. Calling it runs the ORIGINAL file in its own
runtime (ONNX Runtime, LiteRT): that is the model as loaded, the reference every artifact is verified against and
the quality the baseline reports. `content` is the file edgekit deploys: the original file itself, so its
artifacts keep the model's signature (names, dynamic dimensions, metadata) and drop into the program that ran it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, first_line
from edgekit.fileio import atomic_path

RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert"}
ROUTES = {"onnx": "onnx-native", "tflite": "tflite-native"}


@dataclass(eq=False)
class NativeModel:
    """A model as a file its own runtime runs.

    Attributes:
        format: "onnx" or "tflite" (an edgekit.export format).
        source: the original file: the reference every artifact is verified against.
        input_name: the graph input the data feeds.
        input_shape: the shape the model runs at (batch 1).
        content: the model file edgekit deploys (the original file).
        batch_in_file: the batch the original file fixes (None: dynamic).
        blocker: why there is no torch model, one line (set when the native route runs).
        blocked_by: the operator and node that blocked the torch conversion, when one did.
    """

    format: str
    source: Path
    input_name: str
    input_shape: tuple[int, ...]
    content: bytes
    batch_in_file: int | None = 1
    blocker: str = ""
    blocked_by: dict[str, Any] = field(default_factory=dict)
    # A model with several inputs (or integer / scalar ones): every input's shape and how data is made for it
    # when none is given ({"dtype", "fill": "normal" | "zeros", "why"}); empty for one float input.
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    fills: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    _reference: Any = None
    _reference_name: str = ""
    _counts: tuple[int, int, int] | None = None

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.format]

    @property
    def reference_name(self) -> str:
        self._runner()
        return self._reference_name

    def _runner(self) -> Any:
        if self._reference is None:
            if self.format == "onnx":
                from edgekit.importers.onnx_check import _reference_runner

                self._reference, self._reference_name = _reference_runner(
                    self.source, None if len(self.inputs) > 1 else self.input_name)
            else:
                from edgekit.runtimes.litert import LiteRTRunner

                runner = LiteRTRunner(self.source, 1)
                self._reference, self._reference_name = runner, f"{runner.runtime} on {self.source}"
        return self._reference

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The first output of the ORIGINAL file for inputs x (N, ...), run at the file's own batch."""
        return self.outputs(x)[0]

    def outputs(self, x: Any) -> list[np.ndarray]:
        """Every output of the ORIGINAL file for inputs x (N, ...) or an `Inputs`, run at the file's own batch."""
        from edgekit.importers.onnx_check import run_outputs_at_batch

        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x, np.float32)
        return [o.astype(np.float32) if o.dtype.kind == "f" else o
                for o in run_outputs_at_batch(self._runner(), x, self.batch_in_file or 1)]

    # The pipeline keeps "the model as loaded" as a copy and switches modes; a file does not change.
    def eval(self) -> NativeModel:
        return self

    def train(self, mode: bool = True) -> NativeModel:
        return self

    def __deepcopy__(self, memo: dict) -> NativeModel:
        return self

    def write(self, path: Path) -> Path:
        """Writes the deployable model file (atomically)."""
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(self.content)
        return Path(path)

    def weight_counts(self) -> tuple[int, int, int]:
        """(float weights, nonzero float weights, their bytes) stored in the deployable file."""
        if self._counts is None:
            if self.format == "onnx":
                arrays = _onnx_weights(self.content)
                self._counts = (sum(a.size for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays),
                                sum(a.nbytes for a in arrays))
            else:  # a sparse tensor counts its stored values, never densified
                from edgekit.importers.tflite_file import weights

                w = weights(self.content)
                self._counts = (w.dense, w.nonzero, w.nbytes)
        return self._counts


def _onnx_weights(content: bytes) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(content)
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    return [a for a in arrays if a.dtype.kind == "f"]


def route(bundle: Any) -> dict[str, Any]:
    """report.json's `route`: which route ran and, for a native one, why there is no torch model."""
    native = bundle.without_torch
    if native is None:
        return {"name": "torch"}
    return {"name": ROUTES[native.format], "model_format": native.format, "why": native.blocker,
            **({"blocked_by": native.blocked_by} if native.blocked_by else {}),
            "reference": native.reference_name}


def use_native(bundle: Any, why: str, blocked_by: dict[str, Any] | None = None) -> None:
    """Switches a bundle to its native route: the stages see the file, not a torch model."""
    native = bundle.native
    native.blocker = why
    native.blocked_by = dict(blocked_by or {})
    bundle.module = native


def from_onnx(path: Path, info: dict[str, Any]) -> NativeModel:
    """The native model of an imported ONNX file: the file itself."""
    return NativeModel("onnx", Path(path), info["input"]["name"], tuple(info["input"]["shape"]),
                       Path(path).read_bytes(), batch_in_file=info["input"].get("batch_in_file"))


def input_specs(native: NativeModel) -> list[dict[str, Any]]:
    """[{"name", "shape", "dtype", "fill", "why"}] of a model with several inputs, in order (for edgekit.data)."""
    return [{"name": n, "shape": s, **native.fills[n]} for n, s in native.inputs.items()]


def load_onnx_inputs(path: Path, signature: Any, given: Any) -> NativeModel:
    """An ONNX file with several inputs (or an integer one) as a native model.

    Every input's shape: --input-shape NAME=... where given (it must fit the file's static dims), else the file's
    (a dynamic batch at 1). Data made for it when none is given: a float input that looks like a recurrent state (a
    later input with the shape of one of the outputs) and integer inputs are fed zeros, other float inputs standard
    normal values; the report says which (an input with a default value in the file is not fed at all).

    Raises:
        InputError: a name --input-shape gives that the file lacks, a shape that does not fit, or an input with
            dynamic dimensions besides the batch and no --input-shape.
    """
    given = given if isinstance(given, dict) else ({signature.inputs[0].name: tuple(given)} if given else {})
    unknown_names = sorted(set(given) - set(signature.input_names))
    if unknown_names:
        raise InputError(f"{path}: --input-shape names {unknown_names}; the file's inputs are "
                         f"{signature.input_names}")
    out_shapes = {tuple(t.shape) for t in signature.outputs}
    shapes: dict[str, tuple[int, ...]] = {}
    fills: dict[str, dict[str, Any]] = {}
    for k, t in enumerate(signature.inputs):
        dims = list(t.shape)
        if t.name in given:
            g = tuple(given[t.name])
            if len(g) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, g, strict=True)):
                raise InputError(f"{path}: --input-shape {t.name}={','.join(map(str, g))} does not fit "
                                 f"{t.name} {[d if isinstance(d, int) else '?' for d in dims]} of the file")
            shapes[t.name] = g
        elif all(isinstance(d, int) for d in dims[1:]):
            shapes[t.name] = tuple(d if isinstance(d, int) else 1 for d in dims)
        else:
            raise InputError(f"{path}: input '{t.name}' has dynamic dimensions "
                             f"{[d if isinstance(d, int) else '?' for d in dims]}; pass --input-shape "
                             f"'{t.name}=...' (one NAME=D1,D2,... per input)")
        if not t.is_float:
            fills[t.name] = {"dtype": t.dtype, "fill": "zeros", "why": f"{t.dtype} input: zeros (give it data: an "
                                                                         f"array named {t.name} in --data)"}
        elif k > 0 and tuple(t.shape) in out_shapes:
            fills[t.name] = {"dtype": t.dtype, "fill": "zeros", "why": "a recurrent state (an output of its shape "
                                                                        "comes back): zeros, its usual start"}
        else:
            fills[t.name] = {"dtype": t.dtype, "fill": "normal", "why": "standard normal values"}
    first = signature.inputs[0].name
    info = {"format": "onnx", "file": str(path), "inputs": {n: list(s) for n, s in shapes.items()},
            "input": {"name": first, "shape": list(shapes[first])}, "fills": fills, "passes": []}
    return NativeModel("onnx", Path(path), first, shapes[first], Path(path).read_bytes(), batch_in_file=None,
                       inputs=shapes, fills=fills, info=info)


def blocked_by(e: Any) -> dict[str, Any]:
    """The operator and node an UnsupportedOperator names, as data."""
    return {k: getattr(e, k) for k in ("op_type", "node", "domain", "opset", "reason") if getattr(e, k, "")}


def load_tflite(path: Path, input_shape: tuple[int, ...] | None = None) -> tuple[NativeModel, dict[str, Any]]:
    """Reads a float .tflite file as a model: (the native model, the import record).

    Raises:
        InputError: missing, not a TFLite model, truncated, already quantised, several inputs, a non-float input,
            dynamic dimensions, a batch other than 1, or an --input-shape the file does not have.
    """
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    content = path.read_bytes()
    model = _read_flatbuffer(path, content)
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    if not fu.is_float_model(model):
        raise InputError(f"{path} is already quantised; edgekit takes float .tflite models (it quantises them "
                         "itself)")
    from edgekit.importers.tflite_file import custom_operators

    custom = custom_operators(content)
    if custom:
        raise InputError(f"{path}: custom operator{'s' * (len(custom) > 1)} {', '.join(custom)}: LiteRT has no "
                         f"kernel for {'them' if len(custom) > 1 else 'it'} outside the program that registers one, "
                         f"so edgekit cannot run or verify this file")
    interpreter = _interpreter(path, content)
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise InputError(f"{path}: edgekit supports models with one input; this one has {len(inputs)}")
    inp = inputs[0]
    if inp["dtype"] != np.float32:
        raise InputError(f"{path}: edgekit takes models with a float32 input; input '{inp['name']}' is "
                         f"{np.dtype(inp['dtype']).name}")
    shape = tuple(int(d) for d in inp["shape"])
    signature = tuple(int(d) for d in inp.get("shape_signature", inp["shape"]))
    if any(d < 0 for d in signature[1:]):
        raise InputError(f"{path}: input '{inp['name']}' has dynamic dimensions {list(signature)}; edgekit takes "
                         ".tflite files with a static input shape")
    if shape[:1] != (1,):
        raise InputError(f"{path}: the file fixes batch {shape[0]}; edgekit takes .tflite files at batch 1")
    if input_shape and tuple(input_shape) != shape:
        raise InputError(f"{path}: --input-shape {','.join(map(str, input_shape))} does not fit input "
                         f"'{inp['name']}' {list(shape)} of the file")
    _smoke_run(path, interpreter, inp, shape)
    ops = _op_counts(model)
    info = {"format": "tflite", "file": str(path), "producer": _producer(model),
            "input": {"name": inp["name"], "shape_in_file": list(signature), "shape": list(shape)},
            "ops_in_file": dict(ops.most_common()), "nodes_in_file": sum(ops.values()), "passes": []}
    return NativeModel("tflite", path, inp["name"], shape, content), info


def _op_counts(model: Any) -> collections.Counter:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgekit.importers.tflite_file import builtin_code

    codes = [fu.TFL_OP_CODE_TO_NAME.get(builtin_code(c)) for c in model.operatorCodes]
    return collections.Counter(str(getattr(codes[op.opcodeIndex], "value", codes[op.opcodeIndex]))
                               for op in model.subgraphs[0].operators)


def _read_flatbuffer(path: Path, content: bytes) -> Any:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    # A TFLite flatbuffer carries the identifier "TFL3" at bytes 4..8.
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise InputError(f"{path} is not a valid .tflite model (no TFLite file identifier); is the file complete?")
    try:
        model = fu.read_model(bytearray(content))
        if not model.subgraphs:
            raise ValueError("no subgraph")
        return model
    except Exception as e:
        raise InputError(f"{path} is not a valid .tflite model ({first_line(e, 200)}); is the file complete?") from None


def _interpreter(path: Path, content: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.export.tflite import _quiet_native

    try:
        with _quiet_native():  # LiteRT announces its delegate on stderr; errors here must stay one line
            interpreter = Interpreter(model_content=content, num_threads=1)
            interpreter.allocate_tensors()
        return interpreter
    except Exception as e:
        raise InputError(f"{path} is not a valid .tflite model (LiteRT cannot load it: {first_line(e, 200)}); is the "
                         "file complete?") from None


def _smoke_run(path: Path, interpreter: Any, inp: dict[str, Any], shape: tuple[int, ...]) -> None:
    try:
        interpreter.set_tensor(inp["index"], np.zeros(shape, np.float32))
        interpreter.invoke()
    except Exception as e:
        raise InputError(f"{path}: LiteRT cannot run the model ({first_line(e, 200)}); is the file complete?") from None


def _producer(model: Any) -> str:
    desc = getattr(model, "description", None)
    return desc.decode() if isinstance(desc, bytes) else (desc or "")
