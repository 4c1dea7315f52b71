"""Measured per-layer latency for rank choice under a latency budget.

Each candidate (the original conv, or its CP / Tucker-2 sequence at some ranks) is written as a tiny ONNX graph of
Conv nodes at the layer's real input shape and timed in ONNX Runtime on this machine, interleaved with the other
candidates. The figures are host measurements of that runtime only: another runtime or device can rank them
differently (depthwise convs in particular), which is why the stage records where they came from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def conv_graph(convs: list[nn.Conv2d], input_shape: tuple[int, ...]) -> bytes:
    """An ONNX model (opset 18) that applies `convs` in order to one input of `input_shape`."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    prev = "x"
    for i, c in enumerate(convs):
        w = numpy_helper.from_array(c.weight.detach().float().numpy(), f"w{i}")
        inits.append(w)
        ins = [prev, f"w{i}"]
        if c.bias is not None:
            inits.append(numpy_helper.from_array(c.bias.detach().float().numpy(), f"b{i}"))
            ins.append(f"b{i}")
        (ph, pw) = c.padding
        nodes.append(helper.make_node("Conv", ins, [f"y{i}"], kernel_shape=list(c.kernel_size),
                                      strides=list(c.stride), pads=[ph, pw, ph, pw], dilations=list(c.dilation),
                                      group=c.groups))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def time_candidates(candidates: list[list[nn.Conv2d]], input_shape: tuple[int, ...], threads: int = 1,
                    runs: int = 30) -> list[float]:
    """Interleaved p50 latency (ms) of each candidate conv sequence in ONNX Runtime on this machine."""
    from edgekit.devices.timing import time_interleaved
    from edgekit.runtimes import load_runner

    x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edgekit-rank-") as d:
        runners = []
        for i, convs in enumerate(candidates):
            path = Path(d) / f"c{i}.onnx"
            path.write_bytes(conv_graph(convs, input_shape))
            runners.append(load_runner("onnxruntime", path, threads))
        timings = time_interleaved(runners, x, warmup=3, runs=runs)
    return [t.p50_ms for t in timings]


def input_shapes(model: nn.Module, example: np.ndarray, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The input shape each named module sees on `example` (one forward pass with hooks)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape))  # returns None: the input passes on unchanged
        return record

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            model.eval()(torch.as_tensor(example))
    finally:
        for h in hooks:
            h.remove()
    return shapes
