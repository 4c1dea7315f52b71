"""XNNPACK's rules for sparse inference ("Fast Sparse ConvNets", XNNPACK README "Sparse Inference"), as data plus
small predicates over the exported graph (edgekit.rules.graph).

XNNPACK runs a sparse group in CHW layout: it starts at a 3x3 stride-2 stem on 3 channels, holds only CHW-capable
ops, ends at a spatial MEAN (or DEPTH_TO_SPACE), and its 1x1 convolutions are computed as sparse x dense products.
Two rules measured on ai-edge-litert 2.3.0 are not in the README: a FULLY_CONNECTED reading a MEAN without keep_dims
joins the group (its dense weights then count against the 2/3-zeros test), and on x86 CPUs with AVX XNNPACK never
takes the sparse path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.rules.graph import Graph, Op

if TYPE_CHECKING:
    from edgekit.targets import Target

RUNTIME_NAME = "XNNPACK"
MIN_ZERO_FRACTION = 2 / 3  # of all 1x1 CONV_2D filter weights in the group

STEM = {"kind": "CONV_2D", "kernel": (3, 3), "stride": (2, 2), "dilation": (1, 1), "padding": (1, 1, 1, 1),
        "in_channels": 3}
# (kernel, stride) -> padding on each side, for DEPTHWISE_CONV_2D with no dilation.
DEPTHWISE = {((3, 3), (1, 1)): 1, ((3, 3), (2, 2)): 1, ((5, 5), (1, 1)): 2, ((5, 5), (2, 2)): 2}
UNARY = {"ABS", "CEIL", "ELU", "FLOOR", "HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "NEG", "RELU", "RELU6",
         "RELU_N1_TO_1", "ROUND", "SIGMOID", "SQUARE"}
BINARY = {"ADD", "MUL"}
ENDS = {"MEAN", "DEPTH_TO_SPACE"}
PASS_THROUGH = {"DENSIFY", "PAD"}  # DENSIFY feeds weights; PAD is checked where it is fused into a convolution

# CPU rule: (predicate over the target, reason when it blocks). First match blocks the sparse path.
CPU_BLOCKERS = (
    (lambda t: t.arch in ("x86_64", "amd64", "i686") and "avx" in t.simd,
     "x86 CPU with AVX: XNNPACK keeps the dense path (its sparse x86 kernels are SSE-only and dense AVX is faster)"),
)
# Where XNNPACK's CHW sparse kernels run: ARM NEON and WebAssembly (SIMD) builds; on x86 only SSE-only CPUs.
SPARSE_FAMILIES = ("ARM", "WASM")


def cpu_blocker(target: Target) -> str | None:
    return next((why for pred, why in CPU_BLOCKERS if pred(target)), None)


def is_sparse_conv(op: Op) -> bool:
    """A 1x1 CONV_2D XNNPACK can run as sparse x dense in CHW layout."""
    return (op.kind == "CONV_2D" and op.kernel == (1, 1) and op.stride == (1, 1) and op.padding == (0, 0, 0, 0)
            and op.dilation == (1, 1))


def stem_mismatch(op: Op) -> str | None:
    """Why `op` cannot start a sparse group (None: it can)."""
    if op.kind != STEM["kind"]:
        return f"stem does not match: the first convolution is a {op.kind}, not a 3x3 stride-2 CONV_2D on 3 channels"
    facts = {"kernel": op.kernel, "stride": op.stride, "dilation": op.dilation, "padding": op.padding,
             "in_channels": op.in_channels}
    bad = [f"{k} {_fmt(v)} (needs {_fmt(STEM[k])})" for k, v in facts.items() if v != STEM[k]]
    return "stem does not match: " + ", ".join(bad) if bad else None


def member_blocker(op: Op, graph: Graph) -> str | None:
    """Why `op` cannot run inside a sparse (CHW) group (None: it can)."""
    if op.kind == "CONV_2D":
        if is_sparse_conv(op):
            return None
        return (f"CONV_2D {_fmt(op.kernel)} stride {_fmt(op.stride)} padding {_fmt(op.padding)}: only 1x1, "
                "stride 1, no padding runs sparse (3x3 stride 2 only as the stem)")
    if op.kind == "DEPTHWISE_CONV_2D":
        pad = DEPTHWISE.get((op.kernel, op.stride))
        if pad is None or op.dilation != (1, 1):
            return (f"DEPTHWISE_CONV_2D {_fmt(op.kernel)} stride {_fmt(op.stride)}: only 3x3 or 5x5, stride 1 or 2, "
                    "no dilation")
        if op.padding != (pad,) * 4:
            return f"DEPTHWISE_CONV_2D {_fmt(op.kernel)} padding {_fmt(op.padding)} (needs {pad} on each side)"
        return None
    if op.kind in BINARY:
        for shape, const in zip(op.input_shapes, op.constant_inputs, strict=False):
            if const and len(shape) > 1 and max(shape, default=1) > 1 and len([d for d in shape if d > 1]) > 1:
                return f"{op.kind} with a constant that is not a scalar or 1-D vector"
            if not const and len(shape) != 4:
                return f"{op.kind} on {len(shape)}-D inputs (needs 4-D)"
        return None
    if op.kind in UNARY or op.kind in PASS_THROUGH:
        return None
    if op.kind == "RESIZE_BILINEAR":
        out = op.output_shapes[0]
        return None if len(out) == 4 and min(out[1], out[2]) > 1 else "RESIZE_BILINEAR to size 1"
    if op.kind == "MEAN":
        return None if op.axes == (1, 2) else f"MEAN over axes {op.axes} (only spatial axes 1, 2)"
    if op.kind == "DEPTH_TO_SPACE":
        return None
    return f"{op.kind} has no CHW (sparse-path) kernel in XNNPACK"


def find_group(graph: Graph, assume_rewrite: bool = False
               ) -> tuple[Op | None, list[Op], list[tuple[Op, str]], str | None]:
    """The would-be sparse group: (stem, members, blockers [(op, why)], stem problem).

    Walks forward from the first convolution's output through every consumer until the group's end ops.

    Args:
        graph: the exported graph.
        assume_rewrite: judge the graph as edgekit's sparse rewrite will leave it (MEAN -> FC arranged).
    """
    convs = [op for op in graph.ops if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    if not convs:
        return None, [], [], "no convolution: sparse inference is for CNNs"
    stem = convs[0]
    problem = stem_mismatch(stem)
    members: list[Op] = []
    blockers: list[tuple[Op, str]] = []
    seen = {stem.index}
    frontier = list(stem.outputs)
    while frontier:
        tensor = frontier.pop()
        if tensor in graph.outputs:
            producer = graph.ops[graph.producers[tensor]]
            blockers.append((producer, f"{producer.kind} output is a model output inside the group "
                                       "(the group must end in a spatial MEAN or DEPTH_TO_SPACE)"))
        for idx in graph.consumers.get(tensor, []):
            if idx in seen:
                continue
            seen.add(idx)
            op = graph.ops[idx]
            why = member_blocker(op, graph)
            members.append(op)
            if why:
                blockers.append((op, why))
                continue
            if op.kind in ENDS:
                if op.kind == "MEAN" and not op.keep_dims and not assume_rewrite:
                    for c in (graph.ops[i] for t in op.outputs for i in graph.consumers.get(t, [])):
                        if c.kind == "FULLY_CONNECTED":
                            members.append(c)
                            blockers.append((c, "FULLY_CONNECTED reads a MEAN without keep_dims and joins the group "
                                                "(its dense weights count against the 2/3-zeros test); edgekit "
                                                "sparsify rewrites this to MEAN(keep_dims) -> RESHAPE -> FC"))
                continue
            frontier.extend(op.outputs)
    return stem, members, blockers, problem


def group_zero_fraction(members: list[Op]) -> tuple[int, int]:
    """(zeros, params) over the group's 1x1 convolutions (and an FC that joined it)."""
    counted = [op for op in members if is_sparse_conv(op) or op.kind == "FULLY_CONNECTED"]
    return sum(op.weight_zeros for op in counted), sum(op.weight_params for op in counted)


def _fmt(v: object) -> str:
    if isinstance(v, tuple):
        return "x".join(str(x) for x in v) if len(v) == 2 else ",".join(str(x) for x in v)
    return str(v)
