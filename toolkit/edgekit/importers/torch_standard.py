"""Standard torch forms of onnx2torch's modules, so that exports of an imported model look like torch-native ones.

onnx2torch keeps every ONNX constant as a tensor attribute: `x + 3` in a Paddle hard-swish becomes
`OnnxBinaryMathOperation(Add)(x, initializer_of_shape_[1])`. In torch.export that constant is a second, 1-D tensor
input of the add, and litert-torch's layout pass (whose default rule moves an op to NHWC only when all its inputs
are 4-D) leaves those ops in NCHW with a TRANSPOSE on each side: PP-OCR's classifier exported with 37 TRANSPOSEs,
torchvision's MobileNetV3 with 1. Here:

- a one-element float constant operand of Add/Sub/Mul/Div becomes a Python number (`x + 3.0`): the same float32
  arithmetic, and no tensor input left for the layout pass to stop at (PP-OCR's classifier: 37 -> 1 TRANSPOSE);
  a per-channel `[C, 1, 1]` constant exported without extra TRANSPOSEs in a test graph, so it is left alone;
- `x * relu6(x + 3) / 6` and `x * hardsigmoid(x)` (alpha 1/6) become `F.hardswish(x)`, and HardSigmoid with
  alpha 1/6, beta 0.5 becomes `F.hardsigmoid`, as torchvision writes them.

The check against ONNX Runtime on the original file (onnx_check.py) runs on the rewritten module.
"""

from __future__ import annotations

import operator
from typing import Any

# onnx2torch's binary math function -> the operator applied to a Python number operand.
_MATH = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
         "_onnx_div": operator.truediv}
_SIXTH = 1.0 / 6.0


def standardize(module: Any, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Rewrites `module` (a torch.fx.GraphModule from onnx2torch) in place; returns counts per rewrite."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(module).propagate(torch.zeros(input_shape))
    done = {"constant operands": _binary_math(module)}
    done["hardswish"] = _hardswish(module)
    done["hardsigmoid"] = _hardsigmoid(module)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return {k: v for k, v in done.items() if v}


def _attr(module: Any, node: Any) -> Any:
    """The tensor a get_attr node names, else None."""
    if getattr(node, "op", None) != "get_attr":
        return None
    owner, _, name = node.target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name, None)


def _rank(node: Any) -> int | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _binary_math(module: Any) -> int:
    """onnx2torch's Add/Sub/Mul/Div modules -> torch's operators; a one-element float constant operand -> a Python
    number. Returns how many constants became numbers."""
    changed = 0
    for node in list(module.graph.nodes):
        if node.op != "call_module" or node.kwargs or len(node.args) != 2:
            continue
        mod = module.get_submodule(node.target)
        fn = _MATH.get(getattr(getattr(mod, "math_op_function", None), "__name__", ""))
        if type(mod).__name__ != "OnnxBinaryMathOperation" or fn is None or mod.broadcast == 1 or not _float(node):
            continue  # old-style broadcast, and integer division (ONNX truncates), stay as they are
        args = list(node.args)
        consts = [_attr(module, a) for a in args]
        if sum(c is not None for c in consts) == 1:
            k = 0 if consts[0] is not None else 1
            const, rank = consts[k], _rank(args[1 - k])
            # A one-element constant whose rank does not exceed the other operand's broadcasts like a number.
            if (const.is_floating_point() and const.numel() == 1 and rank is not None and const.dim() <= rank
                    and _float(args[1 - k])):
                args[k] = float(const.reshape(()))
                changed += 1
        with module.graph.inserting_after(node):
            new = module.graph.call_function(fn, tuple(args))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        module.graph.erase_node(node)
    return changed


def _float(node: Any) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and getattr(meta, "dtype", None) is not None and meta.dtype.is_floating_point


def _is(node: Any, fn: Any, number: float | None = None) -> Any:
    """The non-number operand of `node` when it is fn(tensor, number) (either order) with that number."""
    if getattr(node, "op", None) != "call_function" or node.target is not fn or len(node.args) != 2:
        return None
    a, b = node.args
    for tensor, value in ((a, b), (b, a)):
        if isinstance(value, float) and hasattr(tensor, "op") and (number is None or abs(value - number) < 1e-6):
            if fn in (operator.sub, operator.truediv) and tensor is not a:
                return None  # 6 / x is no division by six
            return tensor
    return None


def _single_use(*nodes: Any) -> bool:
    return all(len(n.users) == 1 for n in nodes)


def _relu6_input(module: Any, node: Any) -> Any:
    import torch

    if getattr(node, "op", None) == "call_module" and isinstance(module.get_submodule(node.target), torch.nn.ReLU6):
        return node.args[0]
    return None


def _hardsigmoid_input(module: Any, node: Any) -> Any:
    if getattr(node, "op", None) != "call_module":
        return None
    mod = module.get_submodule(node.target)
    import torch

    if isinstance(mod, torch.nn.Hardsigmoid) or (type(mod).__name__ == "OnnxHardSigmoid" and _sixth(mod)):
        return node.args[0]
    return None


def _sixth(mod: Any) -> bool:
    return abs(float(mod.alpha) - _SIXTH) < 1e-6 and abs(float(mod.beta) - 0.5) < 1e-6


def _hardswish(module: Any) -> int:
    """x * relu6(x + 3) / 6 (or * 1/6), and x * hardsigmoid(x) -> F.hardswish(x)."""
    import torch

    changed = 0
    for node in list(module.graph.nodes):
        prod = _is(node, operator.truediv, 6.0) or _is(node, operator.mul, _SIXTH)
        x = None
        if prod is not None and _single_use(prod) and prod.op == "call_function" and prod.target is operator.mul:
            for x_cand, gate in (prod.args, prod.args[::-1]):
                shifted = _relu6_input(module, gate)
                if shifted is not None and _is(shifted, operator.add, 3.0) is x_cand and _single_use(gate, shifted):
                    x = x_cand
                    break
        if x is None and node.op == "call_function" and node.target is operator.mul and len(node.args) == 2:
            for x_cand, gate in (node.args, node.args[::-1]):
                if hasattr(gate, "op") and _hardsigmoid_input(module, gate) is x_cand and _single_use(gate):
                    x = x_cand
                    break
        if x is None:
            continue
        with module.graph.inserting_after(node):
            new = module.graph.call_function(torch.nn.functional.hardswish, (x,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        module.graph.erase_node(node)
        changed += 1
    module.graph.eliminate_dead_code()
    return changed


def _hardsigmoid(module: Any) -> int:
    """HardSigmoid(alpha=1/6, beta=0.5) -> F.hardsigmoid."""
    import torch

    changed = 0
    for name, mod in list(module.named_children()):
        if type(mod).__name__ == "OnnxHardSigmoid" and _sixth(mod):
            setattr(module, name, torch.nn.Hardsigmoid())
            changed += 1
    return changed
