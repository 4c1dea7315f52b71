"""Static forms of onnx2torch modules whose shape arguments are constants.

onnx2torch's Reshape, Slice, Expand, Tile and Resize read their shape arguments from tensors at run time (`.tolist()`,
`.numpy()`, `torch.any(shape == 0)`): data-dependent for torch.export, so a converted model would not export to ONNX
or TFLite again. Where those tensors are constants of the graph, the value is read once here and baked in as
Python numbers; the module then exports like any torch code. Everything else is left to onnx2torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgekit.errors import first_line


def _static_reshape(_: Any, shape: Any) -> Any:
    import torch

    target = [int(v) for v in shape.tolist()]

    class StaticReshape(torch.nn.Module):
        # Set by keep_batch_symbolic: dimension 0 of the target is the batch (1 at import) and follows the input's.
        batch_leading = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # 0 copies the input's dimension (allowzero=0, the only form onnx2torch converts).
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
            if self.batch_leading:
                shape[0] = x.shape[0]
            return torch.reshape(x, shape)

    module = StaticReshape()
    module.target = target
    return module


def _static_slice(_: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    import torch

    starts, ends = [int(v) for v in starts.tolist()], [int(v) for v in ends.tolist()]
    axes = list(range(len(starts))) if axes is None else [int(v) for v in axes.tolist()]
    steps = [1] * len(starts) if steps is None else [int(v) for v in steps.tolist()]

    class StaticSlice(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            index = [slice(None)] * x.dim()
            flips = []
            for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
                axis = axis % x.dim()
                if step < 0:  # ONNX counts a negative step from the end; slice the flipped tensor instead
                    flips.append(axis)
                    start, end, step = -start - 1, -end - 1, -step
                index[axis] = slice(start, end, step)
            if flips:
                x = torch.flip(x, dims=flips)
            return x[tuple(index)]

    return StaticSlice()


def _static_expand(_: Any, shape: Any) -> Any:
    import torch

    target = [int(v) for v in shape.tolist()]

    class StaticExpand(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # ONNX Expand broadcasts both ways (a 1 in the target keeps the input's size), like this product.
            return x * torch.ones(target, dtype=x.dtype, device=x.device)

    return StaticExpand()


def _static_tile(_: Any, repeats: Any) -> Any:
    import torch

    times = [int(v) for v in repeats.tolist()]

    class StaticTile(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.repeat(times)

    return StaticTile()


def _static_resize(original: Any, *args: Any) -> Any:
    import torch

    # Resize-10 takes (x, scales); Resize-11+ takes (x, roi, scales, sizes). roi is ignored as onnx2torch ignores it.
    inner = getattr(original, "_resize", original)
    scales, sizes = (args[0], None) if inner is not original else ((list(args) + [None] * 3)[1:3])
    scale = scales.tolist()[2:] if scales is not None and scales.numel() else None
    size = [int(v) for v in sizes.tolist()[2:]] if sizes is not None and sizes.numel() else None

    class StaticResize(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from onnx2torch.node_converters.resize import _onnx_mode_to_torch_mode

            mode = _onnx_mode_to_torch_mode(inner.onnx_mode, x.dim() - 2)
            return torch.nn.functional.interpolate(x, size=size, scale_factor=scale, mode=mode,
                                                   align_corners=inner.align_corners)

    return StaticResize()


STATIC_FORMS: dict[str, Callable[..., Any]] = {
    "OnnxReshape": _static_reshape, "OnnxSlice": _static_slice, "OnnxExpand": _static_expand, "OnnxTile": _static_tile,
    "OnnxResize": _static_resize, "OnnxResizeV10": _static_resize,
}


def bake_constant_shapes(module: Any) -> dict[str, int]:
    """Replaces modules in STATIC_FORMS whose shape arguments are all graph constants; returns counts per kind."""
    done: dict[str, int] = {}
    for node in list(module.graph.nodes):
        if node.op != "call_module" or node.kwargs:
            continue
        kind = type(module.get_submodule(node.target)).__name__
        if kind not in STATIC_FORMS or not node.args:
            continue
        consts = [_constant(module, a) for a in node.args[1:]]
        if any(c is _NOT_CONSTANT for c in consts):
            continue
        module.add_submodule(node.target, STATIC_FORMS[kind](module.get_submodule(node.target), *consts))
        node.args = node.args[:1]
        done[kind.removeprefix("Onnx")] = done.get(kind.removeprefix("Onnx"), 0) + 1
    module.graph.eliminate_dead_code()
    module.recompile()
    return done


_NOT_CONSTANT = object()


def _constant(module: Any, arg: Any) -> Any:
    """The tensor a get_attr argument names, None for an omitted optional input, else _NOT_CONSTANT."""
    if arg is None:
        return None
    if getattr(arg, "op", None) != "get_attr":
        return _NOT_CONSTANT
    owner, _, name = arg.target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def keep_batch_symbolic(module: Any, input_shape: tuple[int, ...], batch: int = 2) -> tuple[bool, int, str]:
    """Lets a graph imported at batch 1 run whole batches: Reshape targets whose first entry is the import's batch
    (1) take the input's batch instead. Kept only when a batch of random inputs gives what the same inputs give one
    at a time (a graph that mixes samples, or fixes batch 1 elsewhere, fails that and stays per sample).

    Returns:
        (whether the module now runs batches, how many Reshape targets were changed, why not).
    """
    import torch

    reshapes = [m for m in module.modules() if type(m).__name__ == "StaticReshape" and m.target[:1] == [1]]
    for m in reshapes:
        m.batch_leading = True
    x = torch.randn((batch, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            whole = _first(module(x))
            alone = torch.cat([_first(module(x[i:i + 1])) for i in range(batch)])
        agree = whole.shape == alone.shape and bool(
            ((whole - alone).abs().max() <= 1e-5 + 1e-4 * alone.abs().max()).item())
        why = "" if agree else f"a batch of {batch} differs from its inputs run one at a time"
    except Exception as e:  # noqa: BLE001 - any failure at batch > 1 means: run one sample at a time
        agree, why = False, f"fails at batch {batch}: {first_line(e, 120)}"
    if not agree:
        for m in reshapes:
            m.batch_leading = False
        return False, 0, why
    return True, len(reshapes), ""


def _first(out: Any) -> Any:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out
