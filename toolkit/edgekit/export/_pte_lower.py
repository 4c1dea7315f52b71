"""Lowering a torch.export program to an ExecuTorch program with the XNNPACK partitioner, and the delegation
record (which operators XNNPACK runs, in execution order) the `.pte` sidecar keeps. Shared by the exporter
(export/pte.py) and its per-layer accuracy probe (export/_pte_probe.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

from edgekit.errors import EdgekitError, first_line

# Graph operators that are bookkeeping, not work (tuple unpacking of a delegate's outputs).
_BOOKKEEPING = {"getitem"}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.export / executorch warn and log at length; the CLI shows its own progress."""
    loggers = [logging.getLogger(n) for n in ("torch", "executorch", "torchao", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def lower(program: Any, taps: bool = False) -> tuple[bytes, dict[str, Any]]:
    """XNNPACK partitioning and ExecuTorch serialisation: (program bytes, delegation record)."""
    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        with quiet():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            if taps:
                from executorch.devtools.intermediate_output_tap import strip_taps_

                strip_taps_(edge)
            info = delegation(edge.exported_program().graph_module)
            return edge.to_executorch().buffer, info
    except EdgekitError:
        raise
    except Exception as e:
        raise EdgekitError(f"ExecuTorch lowering (XNNPACK partitioner) failed: {first_line(e)}") from None


def delegation(gm: Any) -> dict[str, Any]:
    """What the partitioner did: counts per operator, the delegated fraction, and the operators in execution order.

    The fraction counts graph operators (quantize/dequantize included: in an INT8 program they are work when
    they fall back); tuple unpacking of delegate outputs is not counted.
    """
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    ops: list[dict[str, Any]] = []
    subgraphs = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or _op_name(node.target) in _BOOKKEEPING:
            continue
        if "executorch_call_delegate" in str(node.target):
            subgraphs += 1
            lowered = getattr(gm, node.args[0].target)
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and _op_name(inner.target) not in _BOOKKEEPING:
                    delegated[_op_name(inner.target)] += 1
                    _add_op(ops, inner, delegated=True)
            continue
        portable[_op_name(node.target)] += 1
        _add_op(ops, node, delegated=False)
    n_del, n_port = sum(delegated.values()), sum(portable.values())
    total = n_del + n_port
    return {"delegated_fraction": round(n_del / total, 4) if total else 0.0, "delegated_nodes": n_del,
            "portable_nodes": n_port, "delegated_subgraphs": subgraphs,
            "delegated_ops": dict(sorted(delegated.items())),
            "portable_ops": dict(sorted(portable.items())), "ops": ops}


def _add_op(ops: list[dict[str, Any]], node: Any, delegated: bool) -> None:
    """One executed operator for the profile mapping; quantize/dequantize are tensor types to XNNPACK, not ops."""
    name = _op_name(node.target)
    if "quantize_per" in name or "dequantize_per" in name:
        return
    val = node.meta.get("val")
    tensors = [a for a in node.args if hasattr(a, "meta") and hasattr(a.meta.get("val"), "shape")][:2]
    # A layer is INT8 when its weight is (a float layer after an INT8 one also reads a dequantised input).
    weighted = name in ("aten.convolution.default", "aten.linear.default") and len(tensors) > 1
    quantised = any("dequantize" in _op_name(getattr(a, "target", "")) for a in (tensors[1:2] if weighted
                                                                                    else tensors))
    stack = node.meta.get("nn_module_stack") or {}
    ops.append({"op": name, "node": node.name, "layer": list(stack.values())[-1][0] if stack else "",
                "delegated": delegated,
                "dtype": "int8" if quantised else "float",
                "inputs": [_dims(a.meta["val"].shape) for a in tensors],
                "output": _dims(val.shape) if hasattr(val, "shape") else []})


def _dims(shape: Any) -> list[int | str]:
    """A shape for JSON: a dynamic size (a torch SymInt) as its symbol."""
    return [int(d) if isinstance(d, int) else str(d) for d in shape]


def _op_name(target: Any) -> str:
    """'aten.convolution.default' for an edge or aten operator, the function name otherwise."""
    from torch._ops import OpOverload

    if target is operator.getitem:
        return "getitem"
    op = target if isinstance(target, OpOverload) else getattr(target, "_op", None)  # EdgeOpOverload wraps one
    if isinstance(op, OpOverload):
        return str(op)
    return getattr(target, "__name__", str(target))
