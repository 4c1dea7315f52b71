"""ETDump -> per-operator rows, matched to the layers of the exported program.

The XNNPACK delegate names its events after XNNPACK operators ("Convolution (NHWC, F32) IGEMM #3", "Fully Connected
(NC, QS8, QC8W) GEMM #12"), not after graph nodes, and carries no debug handle, so the mapping is by order: XNNPACK
runs a delegated subgraph's operators in node order, so the k-th event of a category (convolution-like, add, mean,
...) is the k-th node of that category in the program. A category whose counts differ (an operator XNNPACK split or
fused) stays unmapped rather than mislabelled. Operators XNNPACK adds itself (layout transposes, dtype converts,
reshapes) have no node: they keep their XNNPACK name.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import defaultdict
from typing import Any

import numpy as np

# The method, the delegate call around XNNPACK's operators, the wrapper around each portable kernel's own event.
_NOT_OPS = {"Method::execute", "DELEGATE_CALL", "OPERATOR_CALL", "Method::init", "Program::load_method"}
# XNNPACK operator name prefix -> category; graph op -> category (edge dialect names).
EVENT_CATEGORIES = (("Convolution", "layer"), ("Fully Connected", "layer"), ("Deconvolution", "layer"),
                    ("Batch Matrix Multiply", "layer"), ("Add", "add"), ("Multiply", "mul"), ("Mean", "mean"),
                    ("Global Average Pooling", "mean"), ("Average Pooling", "avgpool"), ("Max Pooling", "maxpool"),
                    ("Concatenate", "cat"))
NODE_CATEGORIES = {"aten.convolution.default": "layer", "aten.linear.default": "layer", "aten.addmm.default": "layer",
                   "aten.mm.default": "layer", "aten.bmm.default": "layer", "aten.add.Tensor": "add",
                   "aten.mul.Tensor": "mul", "aten.mean.dim": "mean", "aten.avg_pool2d.default": "avgpool",
                   "aten.max_pool2d_with_indices.default": "maxpool", "aten.max_pool2d.default": "maxpool",
                   "aten.cat.default": "cat"}


def event_category(op_type: str, delegated: bool) -> str | None:
    """XNNPACK events by operator family; portable kernels ("native_call_cumsum.out") by their operator."""
    if not delegated:
        return f"portable:{op_type.removeprefix('native_call_').split('.')[0]}" if op_type.startswith(
            "native_call_") else None
    return next((cat for prefix, cat in EVENT_CATEGORIES if op_type.startswith(prefix)), None)


def node_category(node: dict[str, Any]) -> str | None:
    if not node.get("delegated", True):
        parts = node.get("op", "").split(".")
        return f"portable:{parts[1]}" if len(parts) > 1 else None
    return NODE_CATEGORIES.get(node.get("op", ""))


def read_events(etdump: bytes, skip_runs: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Operator events of the ETDump's Execute block in run order: [{"name", "type", "ms": [per run], "delegated"}],
    and Method::execute per run (ms); the first `skip_runs` runs are left out."""
    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from executorch.devtools import Inspector

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        inspector = Inspector(etdump_data=etdump)
    events: list[dict[str, Any]] = []
    execute: list[float] = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for ev in block.events:
            if ev.perf_data is None:
                continue
            raw = list(ev.perf_data.raw)[skip_runs:]
            if ev.name == "Method::execute":
                execute += raw
            if ev.name in _NOT_OPS or not raw:
                continue
            start = (ev._start_time or [0])[min(skip_runs, len(ev._start_time or [0]) - 1)]
            events.append({"name": ev.name, "type": ev.name.split(" #")[0], "ms": raw, "start": start,
                           "delegated": bool(ev.is_delegated_op)})
    events.sort(key=lambda e: e["start"])
    return events, execute


def map_events(events: list[dict[str, Any]], ops: list[dict[str, Any]] | None
               ) -> tuple[list[dict[str, Any]], bool, str]:
    """Rows {"name", "type", "ms" (median per run), "layer", "op", "signature"} and whether layers were matched."""
    by_cat_nodes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for node in ops or []:
        cat = node_category(node)
        if cat:
            by_cat_nodes[cat].append(node)
    by_cat_events: dict[str, list[int]] = defaultdict(list)
    for i, ev in enumerate(events):
        cat = event_category(ev["type"], ev["delegated"])
        if cat:
            by_cat_events[cat].append(i)
    matched: dict[int, dict[str, Any]] = {}
    skipped = []
    for cat, idx in by_cat_events.items():
        nodes = by_cat_nodes.get(cat, [])
        if len(nodes) == len(idx):
            matched.update({i: n for i, n in zip(idx, nodes, strict=True)})
        elif ops:
            skipped.append(f"{cat}: {len(idx)} XNNPACK operators vs {len(nodes)} graph nodes")
    rows = []
    # Operators XNNPACK adds (converts, transposes) have no node; the tensor they move is the one the last matched
    # operator wrote (or, before any, the program's input), which keys them by size for the predictor.
    here = (ops[0].get("inputs") or [[]])[0] if ops else []
    for i, ev in enumerate(events):
        node = matched.get(i)
        # The median per run: one slow run of a shared machine would move a mean of 20 short runs a lot.
        rows.append({"name": ev["name"], "type": ev["type"], "ms": round(float(np.median(ev["ms"])), 5),
                     "layer": node.get("layer") if node else None, "op": node.get("op") if node else None,
                     "signature": signature(ev["type"], node) if node else f"{ev['type']}|tensor{list(here)}->"})
        if node:
            here = node.get("output") or here
    layers = by_cat_events.get("layer", [])
    mapped = bool(layers) and all(i in matched for i in layers)
    note = "XNNPACK operators matched to graph nodes by order within each category"
    if skipped:
        note += "; not matched (counts differ): " + "; ".join(skipped)
    if not ops:
        note = "no operator list for this program (sidecar missing): XNNPACK operator names only"
    return rows, mapped, note


def signature(op_type: str, node: dict[str, Any] | None) -> str:
    """'<XNNPACK operator>|<dtype>[input],<dtype>[weight]-><dtype>[output]' (the predictor's kernel key format)."""
    if not node:
        return f"{op_type}|"
    dtype = node.get("dtype", "float")
    shapes = [list(s) for s in node.get("inputs", [])]
    if node.get("op") == "aten.linear.default" and len(shapes) > 1:
        shapes[1] = shapes[1][::-1]  # [K, N] like ONNX MatMul / Gemm: the predictor's MAC count reads K first
    ins = ",".join(f"{dtype}{s}" for s in shapes)
    return f"{op_type}|{ins}->{dtype}{list(node.get('output', []))}"
