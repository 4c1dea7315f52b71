"""The model's signature as data: its inputs and outputs (names, order, dtypes, which dimensions are dynamic), read
once from the model as loaded and kept by every artifact that can keep it.

    sig = from_onnx(proto)                 # or from_tflite(path), for_torch(module, example_shapes)
    sig.inputs[0].name, sig.inputs[0].shape      # 'x', (None-named dims are "")
    kept, why = sig.compare(from_onnx(onnx.load("artifact.onnx")))

A dimension is an int (static), or a string (dynamic: its symbol, "" when the file names none). `--input-shape`
only picks the size of each dynamic dimension used to calibrate, time and check; it never freezes the artifact.
report.json records the signature (`report.signature`) and, per artifact, whether it kept it
(`artifact.signature = {"kept": bool, "why": str}`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ONNX TensorProto element types -> numpy dtype names.
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, numpy dtype name, shape (int: static; str: dynamic, its symbol or "")."""

    name: str
    dtype: str = "float32"
    shape: tuple[Dim, ...] = ()

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape) if not isinstance(d, int))

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))

    def concrete(self, sizes: tuple[int, ...] | None = None, batch: int = 1) -> tuple[int, ...]:
        """A static shape: `sizes` where given (must fit the static dims), else batch for a dynamic axis 0 and 1
        for other dynamic axes."""
        if sizes is not None:
            return tuple(int(s) for s in sizes)
        return tuple(d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(self.shape))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype,
                "shape": [d if isinstance(d, int) else (d or None) for d in self.shape],
                "dynamic": list(self.dynamic_axes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d.get("dtype", "float32"),
                   tuple(s if isinstance(s, int) else (s or "") for s in d.get("shape", [])))


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in order.

    Attributes:
        source: where it was read ("onnx file", "tflite file", "torch module").
        opset: the ONNX file's default-domain opset (None for other sources).
        metadata_keys: the ONNX file's metadata_props keys (e.g. a recogniser's `character` alphabet), which the
            ONNX artifacts carry over.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: str = ""
    opset: int | None = None
    metadata_keys: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    # The file's metadata values (ONNX metadata_props), carried to the ONNX artifacts; not in report.json.
    metadata: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic(self) -> bool:
        return any(t.dynamic_axes for t in (*self.inputs, *self.outputs))

    @property
    def batch_dynamic(self) -> bool:
        return all(t.shape and not isinstance(t.shape[0], int) for t in self.inputs)

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": [t.as_dict() for t in self.inputs], "outputs": [t.as_dict() for t in self.outputs],
                "source": self.source, "opset": self.opset, "metadata_keys": list(self.metadata_keys),
                **({"notes": list(self.notes)} if self.notes else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]), d.get("source", ""), d.get("opset"),
                   tuple(d.get("metadata_keys", ())), tuple(d.get("notes", ())))

    def compare(self, other: Signature, what: str = "the artifact") -> tuple[bool, str]:
        """(whether `other` has the same input and output names in order and ranks, and the inputs the same static
        sizes and dynamic axes; the first difference in one line). Output sizes follow from the inputs' (a format
        may record them from the traced example), so only their names and ranks count."""
        for kind, mine, theirs in (("inputs", self.inputs, other.inputs), ("outputs", self.outputs, other.outputs)):
            if [t.name for t in mine] != [t.name for t in theirs]:
                return False, (f"{what} names its {kind} {[t.name for t in theirs]}, the model "
                               f"{[t.name for t in mine]}")
            for a, b in zip(mine, theirs, strict=True):
                if len(a.shape) != len(b.shape):
                    return False, f"{what}'s {kind[:-1]} {a.name} has rank {len(b.shape)}, the model's {len(a.shape)}"
                if kind == "outputs":
                    continue
                off = [i for i, (da, db) in enumerate(zip(a.shape, b.shape, strict=True))
                       if isinstance(da, int) != isinstance(db, int) or (isinstance(da, int) and da != db)]
                if off:
                    return False, (f"{what}'s {kind[:-1]} {a.name} has " + ", ".join(
                        f"dim {i} {_dim(b.shape[i])}" for i in off) + " where the model's "
                        + ("is" if len(off) == 1 else "are") + " " + ", ".join(_dim(a.shape[i]) for i in off))
        return True, ""


def _dim(d: Dim) -> str:
    return str(d) if isinstance(d, int) else f"dynamic ({d})" if d else "dynamic"


def _onnx_dims(value_info: Any) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param if d.HasField("dim_param") else "")
    return tuple(dims)


def from_onnx(proto: Any, source: str = "onnx file") -> Signature:
    """The signature of an ONNX model (graph inputs that are not initializers, graph outputs)."""
    init = {i.name for i in proto.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        return TensorSpec(v.name, ONNX_DTYPES.get(v.type.tensor_type.elem_type, "float32"), _onnx_dims(v))

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return Signature(tuple(spec(v) for v in proto.graph.input if v.name not in init),
                     tuple(spec(v) for v in proto.graph.output), source, opset,
                     tuple(p.key for p in proto.metadata_props),
                     metadata=tuple((p.key, p.value) for p in proto.metadata_props))


def onnx_file_signature(path: str | Path) -> Signature:
    import onnx

    return from_onnx(onnx.load(str(path), load_external_data=False))


def tflite_io(interp: Any) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """[(name, tensor detail)] of a LiteRT interpreter's inputs and outputs: its signature def's when the file has
    one (the names a client looks up), else the subgraph's tensors."""
    by_index = {d["index"]: d for d in (*interp.get_input_details(), *interp.get_output_details())}
    sigs = interp.get_signature_list()
    if sigs:
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        runner = interp.get_signature_runner(key)
        return ([(n, by_index[d["index"]]) for n, d in runner.get_input_details().items()],
                [(n, by_index[d["index"]]) for n, d in runner.get_output_details().items()])
    return ([(d["name"], d) for d in interp.get_input_details()],
            [(d["name"], d) for d in interp.get_output_details()])


def from_tflite(path: str | Path) -> Signature:
    """The signature of a .tflite file (see tflite_io); -1 in the file's shape signature is a dynamic dimension."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    ins, outs = tflite_io(interp)

    def spec(name: str, d: dict[str, Any]) -> TensorSpec:
        sig = d.get("shape_signature")
        shape = [int(s) for s in (sig if sig is not None and len(sig) else d["shape"])]
        return TensorSpec(name, np_dtype_name(d["dtype"]), tuple(s if s > 0 else "" for s in shape))

    where = "signature def" if interp.get_signature_list() else "no signature def: the subgraph's tensors"
    return Signature(tuple(spec(n, d) for n, d in ins), tuple(spec(n, d) for n, d in outs), f"tflite file ({where})")


def np_dtype_name(dtype: Any) -> str:
    import numpy as np

    return np.dtype(dtype).name


AXIS_NAMES = {0: "batch", 1: "channels", 2: "height", 3: "width"}


def for_torch(module: Any, example_shapes: list[tuple[int, ...]], outputs: list[tuple[tuple[int, ...], str]],
              dynamic: tuple[int, ...] = ()) -> Signature:
    """The signature edgekit gives a torch module: its forward()'s parameter names (else input, input_1, ...),
    outputs output / output_1 ..., static at the example's shape except the first input's `dynamic` axes (which the
    user declares: a torch module says nothing about them itself); a dynamic batch makes the outputs' first dim
    dynamic too."""
    import inspect

    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = params if len(params) == len(example_shapes) and all(n.isidentifier() for n in params) else [
        "input" if i == 0 else f"input_{i}" for i in range(len(example_shapes))]

    def dims(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[Dim, ...]:
        return tuple(AXIS_NAMES.get(i, f"dim{i}") if i in axes else int(s) for i, s in enumerate(shape))

    out_axes = (0,) if 0 in dynamic else ()
    return Signature(tuple(TensorSpec(n, "float32", dims(s, tuple(dynamic) if k == 0 else ()))
                           for k, (n, s) in enumerate(zip(names, example_shapes, strict=True))),
                     tuple(TensorSpec("output" if i == 0 else f"output_{i}", dt, dims(s, out_axes))
                           for i, (s, dt) in enumerate(outputs)), "torch module")


def onnx_dims_like(proto: Any, reference: Signature) -> None:
    """Gives an exported ONNX graph's inputs and outputs the dimension symbols of the model as loaded (for the
    dynamic dims both have), so a client that reads them sees the original's; names are kept as they are."""
    by_name = {t.name: t for t in (*reference.inputs, *reference.outputs)}
    for v in (*proto.graph.input, *proto.graph.output):
        ref = by_name.get(v.name)
        if ref is None:
            continue
        for d, r in zip(v.type.tensor_type.shape.dim, ref.shape, strict=False):
            if not isinstance(r, int) and not (d.HasField("dim_value") and d.dim_value > 0):
                d.Clear()
                if r:
                    d.dim_param = r
