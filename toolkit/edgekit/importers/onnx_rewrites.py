"""Small graph rewrites the simplifier does not make, but onnx2torch needs.

Each function changes the ModelProto in place (or returns a new one) and returns a short description of what it did,
or "" when there was nothing to do, so the importer can record exactly which passes applied.
"""

from __future__ import annotations

from typing import Any

# The newest opset every onnx2torch converter we rely on understands (e.g. ReduceMean-18 moved axes to an input).
MAX_OPSET = 17
# Old graphs (Caffe2, early tf2onnx) are moved up to this opset when an operator lacks a converter at its own opset
# (Dropout-7, BatchNormalization-7, Upsample ...).
UPGRADE_OPSET = 13
# onnx2torch converters of old opset versions that convert without error but compute something else:
# op_type -> the first opset whose converter is right. Pad-2 reads an attribute 'constant_value'; the spec's is
# 'value', so a non-zero pad value is lost.
UNRELIABLE_BEFORE = {"Pad": 11}


def default_opset(proto: Any) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def fix_input_shape(proto: Any, name: str, shape: tuple[int, ...]) -> str:
    """Writes a static shape onto graph input `name` (the simplifier folds shape arithmetic from it)."""
    dims = next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim
    before = [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in dims]
    if before == list(shape):
        return ""
    del dims[:]
    for s in shape:
        dims.add().dim_value = int(s)
    return f"input '{name}' {before} -> {list(shape)}"


def _constant_value(node: Any) -> Any:
    """The value of a Constant node as a numpy array, or None (not a Constant, or a string/sparse constant)."""
    import numpy as np
    from onnx import helper, numpy_helper

    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attr.name in dtypes:
        return np.asarray(helper.get_attribute_value(attr), dtypes[attr.name])
    return None


def release_batch(proto: Any, batch: int) -> str:
    """A file fixed at batch N is imported at batch 1: stored shapes that carry N are dropped for re-inference.

    A Reshape that bakes N into a constant is not rewritten; the check against ONNX Runtime running the original
    file at batch N says whether the batch-1 graph computes the same thing per sample.
    """
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims and dims[0].dim_value == batch:
            dims[0].dim_param = "batch"
    del proto.graph.value_info[:]
    return f"fixed batch {batch} -> 1 (the check runs the original file at batch {batch})"


def constants_to_initializers(proto: Any) -> str:
    """Moves every Constant node's value into an initializer (Paddle's exporter stores weights as Constant nodes;
    onnx2torch looks weights up among the initializers only)."""
    from onnx import numpy_helper

    keep, moved = [], 0
    for node in proto.graph.node:
        value = _constant_value(node)
        if value is None:
            keep.append(node)
            continue
        proto.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        moved += 1
    if not moved:
        return ""
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return f"{moved} Constant nodes -> initializers"


def drop_harmless_allowzero(proto: Any) -> str:
    """Reshape(allowzero=1) equals allowzero=0 when the target shape has no zeros; onnx2torch only knows 0."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    changed = 0
    for node in proto.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = consts.get(node.input[1])
        if shape is not None and (shape != 0).all() and any(a.name == "allowzero" and a.i for a in node.attribute):
            keep = [a for a in node.attribute if not (a.name == "allowzero" and a.i == 1)]
            del node.attribute[:]
            node.attribute.extend(keep)
            changed += 1
    return f"{changed} Reshape allowzero=1 -> 0 (no zero in the target shape)" if changed else ""


def drop_initializer_inputs(proto: Any) -> str:
    """IR < 4 lists every initializer as a graph input too; such inputs are constants, not model inputs."""
    inits = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in inits]
    dropped = len(proto.graph.input) - len(keep)
    if not dropped:
        return ""
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    # IR 4 is the version that lets initializers stand outside the inputs; nothing else about the graph changes.
    proto.ir_version = max(proto.ir_version, 4)
    return f"{dropped} initializers no longer listed as graph inputs (IR version {proto.ir_version})"


def missing_converters(proto: Any) -> list[Any]:
    """Nodes onnx2torch has no converter for at the graph's opset (domain, op_type, version)."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    missing = []
    for node in proto.graph.node:
        domain = node.domain if node.domain != "ai.onnx" else ""
        try:
            get_converter(operation_type=node.op_type, version=opsets.get(domain, 0), domain=domain)
        except NotImplementedError:
            missing.append(node)
    return missing


def unreliable_converters(proto: Any) -> list[Any]:
    """Nodes whose onnx2torch converter at the graph's opset is known to be wrong (UNRELIABLE_BEFORE)."""
    opset = default_opset(proto)
    return [n for n in proto.graph.node if n.domain in ("", "ai.onnx") and opset < UNRELIABLE_BEFORE.get(n.op_type, 0)]


def convert_opset(proto: Any, target: int) -> Any:
    """onnx's version converter to `target` (default domain); raises what the converter raises."""
    from onnx import version_converter

    return version_converter.convert_version(proto, target)
