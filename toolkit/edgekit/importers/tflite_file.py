""".tflite files as they come: without a signature def (most of MediaPipe's, many converted files), with sparse
(CSR / block-sparse) weights, with custom operators.

- `for_quantizer(content)`: the copy the LiteRT Quantizer takes: a signature def ("serving_default") made from the
  subgraph's inputs and outputs, named after their tensors, where the file has none (the quantizer works per
  signature; the tensors themselves are unchanged), current operator codes, float16 weights as float32.
- `weights(content)`: the float weights stored in the file, a sparse tensor counted by the values it stores (its
  dense size beside them), never reshaped to its dense shape.
- `custom_operators(content)`: the custom operators a file uses (LiteRT has no kernel for them unless the program
  that ran it registers one): such a file is refused in one line naming them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CUSTOM = 32  # BuiltinOperator.CUSTOM
DEQUANTIZE = 6
# TensorType -> numpy dtype of the values a buffer stores
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
           9: np.int8, 10: np.float64}


def _read(content: bytes | bytearray) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(content))


def builtin_code(code: Any) -> int:
    """An operator code's builtin operator: files written before the schema grew past 127 operators keep it in
    `deprecated_builtin_code` with `builtin_code` 0 (MediaPipe's, among others)."""
    return max(getattr(code, "builtinCode", 0) or 0, getattr(code, "deprecatedBuiltinCode", 0) or 0)


def custom_operators(content: bytes | bytearray) -> list[str]:
    """Names of the custom operators the file's operators use (empty: builtins only)."""
    model = _read(content)
    names = []
    for code in model.operatorCodes:
        if builtin_code(code) == CUSTOM:
            raw = code.customCode
            names.append(raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw))
    return sorted(set(names))


def has_signature(content: bytes | bytearray) -> bool:
    return bool(_read(content).signatureDefs)


def for_quantizer(content: bytes | bytearray, key: str = "serving_default") -> tuple[bytes, bool, int]:
    """(the copy the LiteRT Quantizer takes, whether a signature def was added, how many float16 weights became
    float32), read and written once: every operator code's `builtin_code` set (tools that read only that field, the
    quantizer among them, would otherwise take an old file's operators for ADD); a signature def from the first
    subgraph's inputs and outputs if the file has none (the quantizer works per signature); float16 weights that
    DEQUANTIZE to float32 when the file loads (MediaPipe's) stored as float32 constants, so that the quantizer sees
    weights (sparse ones, DENSIFY, are left as they are)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(content)
    stale = _set_builtin_codes(model)
    added = _add_signature(model, key)
    fp16 = _fp16_weights_as_float32(model)
    changed = stale or added or fp16
    return (bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else bytes(content)), added, fp16


def float32_weights(content: bytes | bytearray) -> tuple[bytes, int]:
    """(the file with float16 weights stored as float32 constants, how many were): see for_quantizer."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(content)
    done = _fp16_weights_as_float32(model)
    return (bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if done else bytes(content)), done


def _set_builtin_codes(model: Any) -> int:
    stale = [c for c in model.operatorCodes if c.builtinCode != builtin_code(c)]
    for c in stale:
        c.builtinCode = builtin_code(c)
    return len(stale)


def _add_signature(model: Any, key: str) -> bool:
    from ai_edge_litert import schema_py_generated as schema

    if model.signatureDefs:
        return False
    graph = model.subgraphs[0]

    def maps(indices: Any) -> list[Any]:
        out = []
        for i in indices:
            m = schema.TensorMapT()
            raw = graph.tensors[i].name
            m.name = raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)
            m.tensorIndex = int(i)
            out.append(m)
        return out

    sig = schema.SignatureDefT()
    sig.inputs, sig.outputs = maps(graph.inputs), maps(graph.outputs)
    sig.signatureKey, sig.subgraphIndex = key, 0
    model.signatureDefs = [sig]
    return True


def _fp16_weights_as_float32(model: Any) -> int:
    from ai_edge_litert import schema_py_generated as schema

    done = 0
    for graph in model.subgraphs:
        kept = []
        for op in graph.operators:
            src = graph.tensors[op.inputs[0]] if len(op.inputs) else None
            buf = model.buffers[src.buffer].data if src is not None and 0 <= src.buffer < len(model.buffers) else None
            if (builtin_code(model.operatorCodes[op.opcodeIndex]) == DEQUANTIZE and src.type == 1
                    and src.sparsity is None and buf is not None and len(buf)):
                values = np.frombuffer(np.asarray(buf, np.uint8).tobytes(), np.float16).astype(np.float32)
                new = schema.BufferT()
                new.data = np.frombuffer(values.tobytes(), np.uint8)
                model.buffers.append(new)
                graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
                done += 1
                continue
            kept.append(op)
        graph.operators = kept
    return done


def without_signature(content: bytes | bytearray) -> bytes:
    """The file with its signature defs removed (a quantised copy of a file that had none looks like it)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(content)
    if not model.signatureDefs:
        return bytes(content)
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@dataclass
class Weights:
    """The float weights a file stores."""

    stored: int  # values stored (a sparse tensor's non-zero values and padding)
    nonzero: int
    dense: int  # values the tensors have at their dense shape
    nbytes: int  # bytes the stored values take
    sparse_tensors: int


def weights(content: bytes | bytearray) -> Weights:
    model = _read(content)
    stored = nonzero = dense = nbytes = sparse = 0
    for graph in model.subgraphs:
        for t in graph.tensors:
            buf = model.buffers[t.buffer].data if 0 <= t.buffer < len(model.buffers) else None
            dtype = _DTYPES.get(t.type)
            if buf is None or len(buf) == 0 or dtype is None or np.dtype(dtype).kind != "f":
                continue
            values = np.frombuffer(np.asarray(buf, np.uint8).tobytes(), dtype=dtype)
            size = int(np.prod(t.shape)) if t.shape is not None and len(t.shape) else values.size
            sparse += t.sparsity is not None
            stored += values.size
            nonzero += int(np.count_nonzero(values))
            dense += size if t.sparsity is not None else values.size
            nbytes += values.nbytes
    return Weights(stored, nonzero, dense, nbytes, sparse)
