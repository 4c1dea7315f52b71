"""The op graph a runtime sees, read from a TFLite flatbuffer: what capability rules are checked against.

Rules look at the exported graph, not at the torch modules, because that is what the runtime runs: BatchNorm is
folded, ReLU6 fused, padding may be an explicit PAD op, and litert-torch adds layout TRANSPOSEs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Op:
    """One runtime op with the facts capability rules need."""

    index: int
    kind: str  # TFLite builtin name: CONV_2D, DEPTHWISE_CONV_2D, MEAN, FULLY_CONNECTED, ...
    name: str  # the torch module it came from where known ("features.1.conv.1"), else kind#index
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output_shapes: tuple[tuple[int, ...], ...] = ()
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    padding: tuple[int, int, int, int] | None = None  # top, left, bottom, right (explicit PAD folded in)
    in_channels: int | None = None
    out_channels: int | None = None
    weight_params: int = 0
    weight_zeros: int = 0
    weight_stored_sparse: bool = False  # filter read through a DENSIFY op
    keep_dims: bool | None = None  # MEAN
    axes: tuple[int, ...] = ()  # MEAN
    constant_inputs: tuple[bool, ...] = ()
    fused_pad: int | None = None  # index of the PAD op folded into this one

    @property
    def zero_fraction(self) -> float:
        return self.weight_zeros / self.weight_params if self.weight_params else 0.0


@dataclass
class Graph:
    ops: list[Op]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    has_densify: bool = False
    producers: dict[int, int] = field(default_factory=dict)  # tensor -> op index
    consumers: dict[int, list[int]] = field(default_factory=dict)  # tensor -> op indices

    def op(self, index: int) -> Op:
        return self.ops[index]


_SEGMENT = re.compile(r"^[\w.]*\.([A-Za-z0-9]+)_(.+)$")


def torch_name(tensor_name: str) -> str | None:
    """'pkg.Net/torch.nn.modules.container.Sequential_features/torch.nn.modules.conv.Conv2d_0;...' -> 'features.0'.

    litert-torch names constants after the module path that made them (class_attribute per level); fused constants
    join several paths with ';'. The path whose last level is a Conv2d or Linear is the weight's module.
    """
    for part in tensor_name.split(";"):
        levels = part.split("/")[1:]
        if not levels or not re.search(r"\.(Conv[123]d|Linear)_[^/]*$", part):
            continue
        attrs = []
        for level in levels:
            m = _SEGMENT.match(level)
            if not m:
                break
            attrs.append(m.group(2))
        else:
            return ".".join(attrs)
    return None


def read_tflite(path: str | Path) -> Graph:
    """The first subgraph of a TFLite file as an op list (PAD ops feeding convolutions are folded into them)."""
    from edgekit.export import tflite_sparse as ts

    model = ts.read_model(Path(path))
    s = ts.schema()
    g = model.subgraphs[0]
    shapes = [tuple(int(d) for d in t.shape) if t.shape is not None else () for t in g.tensors]
    is_const = [(t.buffer < len(model.buffers) and model.buffers[t.buffer].data is not None
                 and len(model.buffers[t.buffer].data) > 0) for t in g.tensors]
    ops: list[Op] = []
    densified: dict[int, int] = {}  # DENSIFY output tensor -> sparse input tensor
    for i, raw in enumerate(g.operators):
        kind = ts.op_name(model, raw)
        ins = tuple(int(t) for t in (raw.inputs if raw.inputs is not None else []))
        outs = tuple(int(t) for t in (raw.outputs if raw.outputs is not None else []))
        op = Op(i, kind, f"{kind.lower()}#{i}", ins, outs, tuple(shapes[t] if t >= 0 else () for t in ins),
                tuple(shapes[t] for t in outs), constant_inputs=tuple(t >= 0 and is_const[t] for t in ins))
        opts = raw.builtinOptions
        if kind == "DENSIFY":
            densified[outs[0]] = ins[0]
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(ins) > 1:
            _conv_facts(op, model, g, opts, densified, s)
        elif kind == "FULLY_CONNECTED" and len(ins) > 1:
            _weight_facts(op, model, g, ins[1], densified)
            op.in_channels, op.out_channels = shapes[ins[1]][-1], shapes[ins[1]][0]
        elif kind == "MEAN":
            op.keep_dims = bool(opts.keepDims) if opts is not None else False
            axes = ts.constant_int(model, g, ins[1])
            rank = len(shapes[ins[0]]) or 4
            op.axes = tuple(sorted(int(a) % rank for a in axes)) if axes is not None else ()
        ops.append(op)
    graph = Graph(ops, tuple(int(t) for t in g.inputs), tuple(int(t) for t in g.outputs), bool(densified))
    for op in ops:
        for t in op.outputs:
            graph.producers[t] = op.index
        for t in op.inputs:
            graph.consumers.setdefault(t, []).append(op.index)
    _fold_pads(graph, model, g, ts)
    return graph


def _weight_facts(op: Op, model, g, w_index: int, densified: dict[int, int]) -> None:
    from edgekit.export import tflite_sparse as ts

    src = densified.get(w_index, w_index)
    t = g.tensors[src]
    op.weight_stored_sparse = t.sparsity is not None
    op.weight_params = int(np.prod(t.shape))
    if t.sparsity is not None:
        nonzero = int(np.count_nonzero(np.frombuffer(np.asarray(model.buffers[t.buffer].data, np.uint8).tobytes(),
                                                     np.float32)))
        op.weight_zeros = op.weight_params - nonzero
    else:
        w = ts.constant(model, g, src)
        op.weight_zeros = int((w == 0).sum()) if w is not None else 0
    name = torch_name(t.name.decode(errors="replace"))
    if name:
        op.name = name


def _conv_facts(op: Op, model, g, opts, densified: dict[int, int], s) -> None:
    w_shape = op.input_shapes[1]
    _weight_facts(op, model, g, op.inputs[1], densified)
    kh, kw = int(w_shape[1]), int(w_shape[2])
    op.kernel = (kh, kw)
    op.stride = (int(opts.strideH), int(opts.strideW))
    op.dilation = (int(opts.dilationHFactor), int(opts.dilationWFactor))
    in_shape, out_shape = op.input_shapes[0], op.output_shapes[0]
    op.in_channels, op.out_channels = int(in_shape[3]), int(out_shape[3])
    if opts.padding == s.Padding.SAME:
        pads = []
        for axis, k, st, d in ((1, kh, op.stride[0], op.dilation[0]), (2, kw, op.stride[1], op.dilation[1])):
            total = max((out_shape[axis] - 1) * st + (k - 1) * d + 1 - in_shape[axis], 0)
            pads.append((total // 2, total - total // 2))
        op.padding = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    else:
        op.padding = (0, 0, 0, 0)


def _fold_pads(graph: Graph, model, g, ts) -> None:
    """XNNPACK fuses a zero, spatial-only PAD into the convolution it feeds; the rules see the fused padding."""
    for op in graph.ops:
        if op.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D") or op.padding is None:
            continue
        p = graph.producers.get(op.inputs[0])
        if p is None or graph.ops[p].kind != "PAD" or len(graph.consumers.get(op.inputs[0], [])) != 1:
            continue
        pad = ts.constant_int(model, g, graph.ops[p].inputs[1])
        if pad is None or pad.size != 8:
            continue
        pad = pad.reshape(4, 2)
        if pad[0].any() or pad[3].any():
            continue
        t, b, left, r = int(pad[1, 0]), int(pad[1, 1]), int(pad[2, 0]), int(pad[2, 1])
        op.padding = (op.padding[0] + t, op.padding[1] + left, op.padding[2] + b, op.padding[3] + r)
        op.fused_pad = p
