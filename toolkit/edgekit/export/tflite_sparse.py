"""Sparse TFLite: pruned constant weights stored as TFLite sparse tensors feeding DENSIFY ops, in a graph arranged
so that XNNPACK's sparse-inference rules (edgekit.rules.xnnpack) can hold.

The rewrite works on the flatbuffer that litert-torch writes (export/tflite.py), so the dense and the sparse artifact
come from one conversion and differ only in how the weights are stored and in the MEAN/RESHAPE arrangement:

- every 1x1 CONV_2D whose constant filter has at least `min_zero_fraction` zeros gets its filter stored with sparsity
  parameters (traversal order [0, 1, 2, 3], DENSE, DENSE, DENSE, SPARSE_CSR; FormatConverterFp32 of ai-edge-litert
  encodes it) and read through a DENSIFY op. The DENSIFY ops also make TFLite's XNNPACK delegate pass its "sparse
  inference" hint to XNNPACK.
- a MEAN over the spatial axes without keep_dims that feeds a FULLY_CONNECTED becomes MEAN(keep_dims) -> RESHAPE ->
  FULLY_CONNECTED. Without this, XNNPACK pulls the FC into the sparse group and its dense weights count against the
  "at least 2/3 zeros" test, so the whole group stays dense.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError
from edgekit.fileio import copy_atomic, write_bytes

if TYPE_CHECKING:
    import torch.nn as nn

RUNTIME = "litert"
SUFFIX = "_sparse.tflite"
DEFAULT_MIN_ZERO_FRACTION = 0.5  # below this, CSR indices cost more bytes than the zeros they replace


def schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(path: Path) -> Any:
    """The flatbuffer at `path` as the schema's object API (ModelT)."""
    s = schema()
    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InputError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)")
    return s.ModelT.InitFromPackedBuf(data, 0)


def model_bytes(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_name(model: Any, op: Any) -> str:
    s = schema()
    oc = model.operatorCodes[op.opcodeIndex]
    code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
    return _OP_NAMES.setdefault(code, next((k for k, v in vars(s.BuiltinOperator).items() if v == code), str(code)))


_OP_NAMES: dict[int, str] = {}


def constant(model: Any, graph: Any, tensor_index: int) -> np.ndarray | None:
    """The value of a constant float32 tensor (None for activations and sparse tensors)."""
    s = schema()
    if tensor_index < 0:
        return None
    t = graph.tensors[tensor_index]
    buf = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
    if buf is None or len(buf) == 0 or t.sparsity is not None or t.type != s.TensorType.FLOAT32:
        return None
    return np.frombuffer(np.asarray(buf, np.uint8).tobytes(), np.float32).reshape(tuple(int(d) for d in t.shape))


def _opcode_index(model: Any, code: int) -> int:
    s = schema()
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    oc = s.OperatorCodeT()
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, 127)  # values >= 127 live only in builtinCode
    oc.version = 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _new_buffer(model: Any, data: bytes) -> int:
    s = schema()
    b = s.BufferT()
    b.data = np.frombuffer(data, np.uint8).copy()
    model.buffers.append(b)
    return len(model.buffers) - 1


def _new_tensor(model: Any, graph: Any, name: str, shape: list[int], ttype: int, buffer: int = 0) -> int:
    s = schema()
    t = s.TensorT()
    t.name = name.encode()
    t.shape = np.asarray(shape, np.int32)
    t.type = ttype
    t.buffer = buffer
    graph.tensors.append(t)
    return len(graph.tensors) - 1


def _index_vector(values: list[int]) -> tuple[int, Any]:
    """The smallest of TFLite's index vector types that holds `values` (uint8, uint16, int32)."""
    s = schema()
    top = max(values) if values else 0
    if top < 1 << 8:
        v, kind = s.Uint8VectorT(), s.SparseIndexVector.Uint8Vector
        v.values = np.asarray(values, np.uint8)
    elif top < 1 << 16:
        v, kind = s.Uint16VectorT(), s.SparseIndexVector.Uint16Vector
        v.values = np.asarray(values, np.uint16)
    else:
        v, kind = s.Int32VectorT(), s.SparseIndexVector.Int32Vector
        v.values = np.asarray(values, np.int32)
    return kind, v


def sparsity_parameters(weight: np.ndarray) -> tuple[Any, np.ndarray]:
    """CSR sparsity parameters (last axis sparse) and the nonzero values of a 4-D float32 filter."""
    from ai_edge_litert import format_converter_wrapper_pybind11 as fc

    s = schema()
    dense, csr = fc.TfLiteDimensionType.TF_LITE_DIM_DENSE, fc.TfLiteDimensionType.TF_LITE_DIM_SPARSE_CSR
    shape = [int(d) for d in weight.shape]
    conv = fc.FormatConverterFp32(shape, [0, 1, 2, 3], [dense, dense, dense, csr], [], [])
    if conv.DenseToSparse(np.ascontiguousarray(weight, np.float32)) != fc.TfLiteStatus.TF_LITE_OK:
        raise InputError(f"FormatConverterFp32 could not encode a filter of shape {shape}")
    meta = conv.GetDimMetadata()
    params = s.SparsityParametersT()
    params.traversalOrder = np.arange(4, dtype=np.int32)
    params.dimMetadata = []
    for axis in range(4):
        dm = s.DimensionMetadataT()
        if axis < 3:
            dm.format = s.DimensionType.DENSE
            dm.denseSize = int(meta[2 * axis][0])
        else:
            dm.format = s.DimensionType.SPARSE_CSR
            dm.arraySegmentsType, dm.arraySegments = _index_vector(list(meta[2 * axis]))
            dm.arrayIndicesType, dm.arrayIndices = _index_vector(list(meta[2 * axis + 1]))
        params.dimMetadata.append(dm)
    return params, np.asarray(conv.GetData(), np.float32)


def arrange_mean_reshape_fc(model: Any) -> int:
    """MEAN (no keep_dims) -> FULLY_CONNECTED becomes MEAN(keep_dims) -> RESHAPE -> FULLY_CONNECTED; returns how many."""
    s = schema()
    g = model.subgraphs[0]
    changed = 0
    for i in range(len(g.operators) - 1, -1, -1):
        op = g.operators[i]
        if op_name(model, op) != "MEAN" or op.builtinOptions is None or op.builtinOptions.keepDims:
            continue
        src, out = g.tensors[op.inputs[0]], op.outputs[0]
        axes = constant_int(model, g, op.inputs[1])
        if len(src.shape) != 4 or axes is None or sorted(int(a) % 4 for a in axes) != [1, 2]:
            continue
        if not any(op_name(model, c) == "FULLY_CONNECTED" and out in c.inputs for c in g.operators):
            continue
        n, c = int(src.shape[0]), int(src.shape[3])
        kept = _new_tensor(model, g, g.tensors[out].name.decode() + "/keep_dims", [n, 1, 1, c], s.TensorType.FLOAT32)
        shape_t = _new_tensor(model, g, g.tensors[out].name.decode() + "/shape", [2], s.TensorType.INT32,
                              _new_buffer(model, np.asarray([n, c], np.int32).tobytes()))
        op.builtinOptions.keepDims = True
        op.outputs = np.asarray([kept], np.int32)
        reshape = s.OperatorT()
        reshape.opcodeIndex = _opcode_index(model, s.BuiltinOperator.RESHAPE)
        reshape.inputs = np.asarray([kept, shape_t], np.int32)
        reshape.outputs = np.asarray([out], np.int32)
        reshape.builtinOptionsType = s.BuiltinOptions.ReshapeOptions
        reshape.builtinOptions = s.ReshapeOptionsT()
        reshape.builtinOptions.newShape = np.asarray([n, c], np.int32)
        g.operators.insert(i + 1, reshape)
        changed += 1
    return changed


def constant_int(model: Any, graph: Any, tensor_index: int) -> np.ndarray | None:
    t = graph.tensors[tensor_index]
    buf = model.buffers[t.buffer].data
    if buf is None or len(buf) == 0 or t.type != schema().TensorType.INT32:
        return None
    return np.frombuffer(np.asarray(buf, np.uint8).tobytes(), np.int32)


def sparsify_weights(model: Any, min_zero_fraction: float = DEFAULT_MIN_ZERO_FRACTION) -> list[dict[str, Any]]:
    """Stores 1x1 CONV_2D filters with enough zeros as sparse tensors behind DENSIFY ops; returns one row per filter."""
    s = schema()
    g = model.subgraphs[0]
    consumers: dict[int, list[Any]] = {}
    for op in g.operators:
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(op)
    rows, densify_ops = [], []
    for w_index in sorted({int(op.inputs[1]) for op in g.operators if op_name(model, op) == "CONV_2D"}):
        users = consumers.get(w_index, [])
        w = constant(model, g, w_index)
        # A filter shared with anything but 1x1 convolutions keeps its dense storage.
        if w is None or w.ndim != 4 or w.shape[1:3] != (1, 1) or any(
                op_name(model, u) != "CONV_2D" or int(u.inputs[1]) != w_index for u in users):
            continue
        zeros = float((w == 0).mean())
        row = {"tensor": g.tensors[w_index].name.decode(), "shape": list(w.shape), "zero_fraction": zeros,
               "sparse": zeros >= min_zero_fraction, "dense_bytes": int(w.nbytes)}
        rows.append(row)
        if not row["sparse"]:
            continue
        params, values = sparsity_parameters(w)
        t = g.tensors[w_index]
        dense_out = _new_tensor(model, g, t.name.decode() + "/densified", list(w.shape), s.TensorType.FLOAT32)
        # The original tensor becomes the sparse constant; its consumers read the DENSIFY output instead.
        # The dense buffer may be shared with another constant: leave it; _drop_unused_buffers empties it if not.
        t.buffer = _new_buffer(model, values.tobytes())
        t.sparsity = params
        for u in users:
            u.inputs = np.asarray([dense_out if int(i) == w_index else int(i) for i in u.inputs], np.int32)
        op = s.OperatorT()
        op.opcodeIndex = _opcode_index(model, s.BuiltinOperator.DENSIFY)
        op.inputs = np.asarray([w_index], np.int32)
        op.outputs = np.asarray([dense_out], np.int32)
        op.builtinOptionsType = s.BuiltinOptions.DensifyOptions
        op.builtinOptions = s.DensifyOptionsT()
        densify_ops.append(op)
        row["sparse_bytes"] = int(values.nbytes + sum(
            np.asarray(v.values).nbytes for v in (params.dimMetadata[3].arraySegments, params.dimMetadata[3].arrayIndices)))
    g.operators[:0] = densify_ops  # DENSIFY runs before every consumer
    _drop_unused_buffers(model)
    return rows


def _drop_unused_buffers(model: Any) -> None:
    """Empties buffers no tensor points at any more (the dense copies of sparsified filters)."""
    used = {int(t.buffer) for g in model.subgraphs for t in g.tensors}
    used |= {int(m.buffer) for m in (model.metadata or [])}
    for i, b in enumerate(model.buffers):
        if i not in used and b.data is not None:
            model.buffers[i] = schema().BufferT()


def rewrite(src: Path, dst: Path, min_zero_fraction: float = DEFAULT_MIN_ZERO_FRACTION) -> dict[str, Any]:
    """Writes the sparse, XNNPACK-arranged copy of the TFLite file `src` to `dst`; returns what changed."""
    model = read_model(src)
    arranged = arrange_mean_reshape_fc(model)
    rows = sparsify_weights(model, min_zero_fraction)
    if arranged or any(r["sparse"] for r in rows):
        write_bytes(dst, model_bytes(model))
    else:  # nothing to rewrite: the file as it is (re-packing vgg19's 0.55 GB of weights peaked 1 GB above its conversion)
        del model
        copy_atomic(src, dst)
    return {"mean_reshape_fc": arranged, "filters": rows, "sparse_filters": sum(r["sparse"] for r in rows),
            "size_dense_bytes": Path(src).stat().st_size, "size_sparse_bytes": Path(dst).stat().st_size}


def export(model: nn.Module, example: np.ndarray, path: Path) -> Path:
    """TFLite through litert-torch, then the sparse rewrite (an exporter like export/onnx.py and export/tflite.py)."""
    import tempfile

    from edgekit.export import tflite

    with tempfile.TemporaryDirectory(prefix="edgekit-sparse-") as d:
        dense = tflite.export(model, example, Path(d) / "dense.tflite")
        rewrite(dense, path)
    return path
