"""ONNX files from any exporter into torch: an import pass, onnx2torch, and a check against ONNX Runtime.

Exporters other than torch's write graphs onnx2torch cannot take as they are: weights as Constant nodes (Paddle),
weights computed by constant sub-graphs (ConstantOfShape, Unsqueeze, Mul ... in Caffe2 conversions), shape arithmetic
(Shape -> Slice -> Concat -> Reshape) over dynamic height and width, opsets older or newer than its converters. The
import pass fixes the input shape, lets onnxslim fold constants and shape arithmetic into initializers and static
shapes, then makes the small rewrites onnxslim leaves (remaining Constant nodes, opset, Reshape allowzero). What
cannot be converted raises UnsupportedOperator, which names the operator and the node and carries both as data.

`import_onnx` runs before any data is loaded; `check_import` (onnx_check.py) runs the converted model against ONNX
Runtime on the ORIGINAL file once calibration inputs exist (api.compress calls it after load_data), so the check uses
real data when the user gave some.
"""

from __future__ import annotations

import collections
import warnings as warnings_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, first_line
from edgekit.importers import onnx_rewrites as rw
from edgekit.importers.onnx_check import ATOL, RTOL, ImportCheckError, check_import  # noqa: F401 - public here too
from edgekit.importers.torch_standard import standardize
from edgekit.importers.torch_static import bake_constant_shapes, keep_batch_symbolic
from edgekit.progress import quiet_output


class UnsupportedOperator(InputError):
    """A node onnx2torch cannot convert: the operator and node are kept as data for an ONNX-native route."""

    def __init__(self, path: Path | str, op_type: str, node: str, *, domain: str = "", opset: int = 0,
                 reason: str = "") -> None:
        self.path, self.op_type, self.node, self.domain, self.opset, self.reason = (
            str(path), op_type, node, domain, opset, reason)
        self.info: dict[str, Any] = {}
        op = f"{domain}.{op_type}" if domain and domain != "ai.onnx" else op_type
        why = f": {reason}" if reason else ""
        super().__init__(f"{path}: cannot convert to torch: operator {op} (node '{node}', opset {opset}) is not "
                         f"supported by onnx2torch{why}")


@dataclass
class OnnxImport:
    """A converted ONNX file: the torch module, the graph it was converted from, and what the import did."""

    module: Any  # torch.fx.GraphModule, imported at batch 1
    proto: Any  # the rewritten onnx.ModelProto that onnx2torch converted
    input_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)
    batched: bool = False  # the module runs whole batches (else one sample at a time)


def import_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None, standard: bool = True) -> OnnxImport:
    """Reads, rewrites and converts an ONNX file to a torch module.

    Args:
        path: the .onnx file.
        input_shape: N,C,H,W; needed when the file leaves dimensions other than the batch dynamic.
        standard: rewrite onnx2torch's modules into standard torch ops and let the graph run whole batches
            (False: the module as onnx2torch writes it, with static shapes only, e.g. to compare against).

    Raises:
        InputError: the file is missing, not an ONNX model, truncated, has several inputs or needs a shape.
        UnsupportedOperator: a node cannot be converted (names the operator and the node); its `info` is the import
            record, for the ONNX-native route (which deploys the file itself).
    """
    path = Path(path)
    proto, info, shape, applied = _prepare(path, input_shape)
    try:
        module, proto = _to_torch(proto, path, shape, info, applied, standard)
    except UnsupportedOperator as e:
        info.update(nodes_converted=len(proto.graph.node), ops_converted=_op_counts(proto))
        e.info = info
        raise
    return OnnxImport(module, proto, tuple(shape), info, batched=info["batch"]["whole_batches"])


def _prepare(path: Path, input_shape: tuple[int, ...] | None) -> tuple[Any, dict[str, Any], tuple[int, ...], Any]:
    """Reads the file and runs the cleaning passes (input shape, batch, onnxslim, constants)."""
    import onnx

    proto, warnings = _read(path)
    passes: list[dict[str, str]] = []

    def applied(name: str, detail: str) -> None:
        if detail:
            passes.append({"pass": name, "detail": detail})

    applied("initializer-inputs", rw.drop_initializer_inputs(proto))
    name, file_shape = _single_input(proto, path)
    shape = _resolve_shape(path, name, file_shape, input_shape)
    info: dict[str, Any] = {
        "format": "onnx", "file": str(path), "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "ir_version": proto.ir_version, "opset": rw.default_opset(proto),
        "input": {"name": name, "shape_in_file": file_shape, "shape": list(shape)},
        "nodes_in_file": len(proto.graph.node), "ops_in_file": _op_counts(proto), "passes": passes,
        "warnings": warnings, "onnx": onnx.__version__}
    file_batch = file_shape[0] if file_shape and isinstance(file_shape[0], int) else None
    info["input"]["batch_in_file"] = file_batch
    applied("input-shape", rw.fix_input_shape(proto, name, (1, *shape[1:])))
    if file_batch not in (None, 1):
        applied("batch", rw.release_batch(proto, file_batch))
    proto = _simplify(proto, applied)
    applied("constants", rw.constants_to_initializers(proto))
    return proto, info, tuple(shape), applied


def _to_torch(proto: Any, path: Path, shape: tuple[int, ...], info: dict[str, Any], applied: Any,
              standard: bool = True) -> tuple[Any, Any]:
    """The onnx2torch-specific rewrites, the conversion, and the torch-side passes; (module, converted proto)."""
    proto = _fit_opset(proto, path, applied)
    applied("allowzero", rw.drop_harmless_allowzero(proto))
    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        module = _convert(proto, path).eval()  # eval before any forward: a training-mode BatchNorm updates its stats
    info["warnings"] += sorted({f"onnx2torch: {w.message}" for w in caught})
    baked = bake_constant_shapes(module)
    applied("static-shapes", f"constant shape arguments baked into {_counts_text(baked)}" if baked else "")
    one = (1, *shape[1:])
    _smoke_run(module, proto, path, one)
    rewritten = standardize(module, one) if standard else {}
    applied("standard-ops", f"onnx2torch modules as standard torch ops: {_counts_text(rewritten)}" if rewritten else "")
    whole, reshapes, why = keep_batch_symbolic(module, one) if standard else (False, 0, "not asked for")
    info["batch"] = {"whole_batches": whole, **({"why_not": why} if why else {})}
    applied("batch-symbolic", f"{reshapes} Reshape targets keep the batch dimension symbolic" if reshapes else "")
    from importlib.metadata import version

    info.update(nodes_converted=len(proto.graph.node), ops_converted=_op_counts(proto),
                opset_converted=rw.default_opset(proto), converter=f"onnx2torch {version('onnx2torch')}")
    return module, proto


def _read(path: Path) -> tuple[Any, list[str]]:
    import onnx

    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as e:
        raise InputError(f"{path} is not a valid ONNX model ({first_line(e, 200)}); is the file complete?") from None
    warnings = []
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        # Some exporters write files the checker rejects and ONNX Runtime runs; a user's runtime decides.
        if not proto.graph.node or not _ort_loads(path):
            raise InputError(f"{path} is not a valid ONNX model ({first_line(e, 200)}); is the file complete?") from None
        warnings.append(f"onnx.checker: {first_line(e, 200)} (ONNX Runtime loads the file)")
    return proto, warnings


def _ort_loads(path: Path) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


def _single_input(proto: Any, path: Path) -> tuple[str, list[int | str]]:
    inputs = list(proto.graph.input)
    if len(inputs) != 1:
        raise InputError(f"{path}: edgekit supports models with one input; this one has {len(inputs)} "
                         f"({', '.join(i.name for i in inputs[:4])})")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != 1:  # TensorProto.FLOAT
        import onnx

        kind = onnx.TensorProto.DataType.Name(tensor.elem_type).lower() if tensor.elem_type else "not a tensor"
        raise InputError(f"{path}: edgekit takes models with a float32 input; input '{inputs[0].name}' is {kind}")
    dims = tensor.shape.dim
    return inputs[0].name, [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in dims]


def _resolve_shape(path: Path, name: str, file_shape: list[int | str], given: tuple[int, ...] | None
                   ) -> tuple[int, ...]:
    """The input shape to import at: --input-shape where given (it must fit the file's static dims past the
    batch), else the file's. The graph itself is always imported at batch 1 (a fixed batch in the file included)."""
    if given:
        fits = len(given) == len(file_shape) and all(
            not isinstance(f, int) or f == g for f, g in zip(file_shape[1:], given[1:], strict=True))
        if not fits:
            raise InputError(f"{path}: --input-shape {','.join(map(str, given))} does not fit input '{name}' "
                             f"{file_shape} of the file")
        return tuple(given)
    if not file_shape or any(not isinstance(d, int) for d in file_shape[1:]):
        raise InputError(f"{path}: input '{name}' has dynamic dimensions {file_shape}; pass --input-shape, "
                         f"e.g. --input-shape 1,3,224,224")
    return (1, *file_shape[1:])


def _simplify(proto: Any, applied: Any) -> Any:
    """onnxslim: constant folding (Constant, ConstantOfShape, Unsqueeze ... sub-graphs become initializers), shape
    arithmetic over the now static input folded to constants, BatchNorm folded into Conv, dead nodes removed."""
    import onnxslim

    before = _op_counts(proto)
    try:
        with quiet_output():
            slim = onnxslim.slim(proto)
    except Exception as e:  # the rewrites below and the ORT check still decide whether the import holds
        applied("onnxslim", f"onnxslim {onnxslim.__version__} failed ({first_line(e, 200)}); continued without it")
        return proto
    after = _op_counts(slim)
    gone = {op: n - after.get(op, 0) for op, n in before.items() if n > after.get(op, 0)}
    new = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
    detail = f"onnxslim {onnxslim.__version__}: {sum(before.values())} -> {sum(after.values())} nodes"
    if gone:
        detail += f"; folded or fused away {_counts_text(gone)}"
    if new:
        detail += f"; new {_counts_text(new)}"
    applied("onnxslim", detail)
    return slim


def _fit_opset(proto: Any, path: Path, applied: Any) -> Any:
    """Moves the graph into the opsets onnx2torch converts, only where that is needed."""
    opset = rw.default_opset(proto)
    target = rw.MAX_OPSET if opset > rw.MAX_OPSET else None
    if target is None and opset < rw.UPGRADE_OPSET and (rw.missing_converters(proto)
                                                        or rw.unreliable_converters(proto)):
        target = rw.UPGRADE_OPSET
    if target is not None:
        try:
            converted = rw.convert_opset(proto, target)
        except Exception as e:
            if opset > rw.MAX_OPSET:
                raise InputError(f"{path}: cannot convert opset {opset} to {target} for import "
                                 f"({first_line(e, 200)})") from None
            converted = None  # an upgrade that fails leaves the missing converter to be reported below
        if converted is not None:
            proto = converted
            applied("opset", f"opset {opset} -> {target} (onnx version converter)")
    missing = rw.missing_converters(proto)
    if missing:
        node = missing[0]
        opsets = {o.domain or "": o.version for o in proto.opset_import}
        raise UnsupportedOperator(path, node.op_type, node.name or node.output[0], domain=node.domain,
                                  opset=opsets.get(node.domain if node.domain != "ai.onnx" else "", 0))
    return proto


def _convert(proto: Any, path: Path) -> Any:
    from onnx2torch import convert

    try:
        with quiet_output():
            return convert(proto)
    except Exception as e:
        node = _blocking_node(proto)
        if node is None:
            raise InputError(f"{path}: cannot convert to torch ({first_line(e, 200)})") from None
        raise UnsupportedOperator(path, node.operation_type, node.proto.name or node.unique_name,
                                  domain=node.domain, opset=rw.default_opset(proto), reason=first_line(e, 200)) from None


def _blocking_node(proto: Any) -> Any:
    """The first node whose onnx2torch converter raises (convert() itself does not say which node failed)."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    graph = OnnxGraph(safe_shape_inference(proto).graph)
    for node in graph.nodes.values():
        try:
            get_converter(operation_type=node.operation_type, version=opsets.get(node.domain, 0),
                          domain=node.domain)(node, graph)
        except Exception:
            return node
    return None


def _smoke_run(module: Any, proto: Any, path: Path, shape: tuple[int, ...]) -> None:
    """Runs the converted module once on zeros; a converter whose module fails at run time is named here."""
    import torch
    from onnx2torch.onnx_graph import OnnxGraph

    try:
        with torch.no_grad():
            module(torch.zeros(shape))
        return
    except Exception as e:
        err = e
    failed = _failing_fx_node(module, torch.zeros(shape))
    nodes = OnnxGraph(proto.graph).nodes
    onnx_node = nodes.get(failed) if failed else None  # onnx2torch names each module after its node
    if onnx_node is None:
        raise InputError(f"{path}: the converted torch model fails to run ({first_line(err, 200)})") from None
    raise UnsupportedOperator(path, onnx_node.operation_type, onnx_node.proto.name or onnx_node.unique_name,
                              domain=onnx_node.domain, opset=rw.default_opset(proto),
                              reason=f"its torch module fails: {first_line(err, 200)}") from None


def _failing_fx_node(module: Any, x: Any) -> str | None:
    import torch.fx

    failed: list[str] = []

    class Probe(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            try:
                return super().run_node(n)
            except Exception:
                failed.append(str(n.target))
                raise

    try:
        Probe(module).run(x)
    except Exception:
        pass
    return failed[0] if failed else None


def _op_counts(proto: Any) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in proto.graph.node).most_common())


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda t: -t[1]))
