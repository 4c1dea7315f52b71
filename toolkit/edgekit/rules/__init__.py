"""Capability rules: which layers a target's runtimes can run sparse and/or in INT8, and why not.

A target's runtime names its sparse rule set (`sparse_rules = "xnnpack"` in targets/*.toml); the rule set is a module
here (rules/xnnpack.py, rules/none.py) holding the rules as data plus small predicates over the exported op graph
(rules/graph.py). `check_graph` gives per-layer and whole-model verdicts (used by `edgekit check` and the sparsify
stage); `prunable_layers` tells a pruning stage which torch modules are worth pruning for sparse inference.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import unknown
from edgekit.rules.graph import Graph, Op, read_tflite

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.targets import RuntimeSpec, Target

__all__ = ["Graph", "Op", "read_tflite", "check_graph", "check_model", "prunable_layers", "LayerVerdict",
           "RuntimeVerdict", "model_graph"]

HIDDEN_OPS = {"DENSIFY", "TRANSPOSE", "RESHAPE"}  # bookkeeping ops the per-layer table leaves out


@dataclass
class LayerVerdict:
    index: int
    name: str
    op: str
    sparse: bool
    sparse_reason: str
    int8: bool
    int8_reason: str
    zero_fraction: float | None = None
    delegated: bool | None = None  # runtimes with a delegate (ExecuTorch): the operator runs in it
    delegate_reason: str = ""


@dataclass
class RuntimeVerdict:
    """What one runtime of the target does with the model."""

    runtime: str
    format: str
    rules: str
    sparse: bool  # the runtime will run the pruned layers with sparse kernels
    structure_ok: bool  # the graph has a valid sparse group (ignoring zeros and the CPU)
    zero_fraction: float | None  # zeros in the group's 1x1 convolutions
    blockers: list[dict[str, str]] = field(default_factory=list)  # [{"layer": ..., "why": ...}]
    summary: str = ""
    layers: list[LayerVerdict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def get(rules: str) -> Any:
    try:
        return importlib.import_module(f"edgekit.rules.{rules}")
    except ModuleNotFoundError:
        raise unknown("sparse rule set", rules, ["xnnpack", "executorch", "none"], "Fix sparse_rules in the target file") from None


def _int8(op: Op, rt: RuntimeSpec) -> tuple[bool, str]:
    if not rt.int8:
        return False, f"{rt.name} has no INT8 kernels on this target"
    if rt.int8_ops and op.kind.lower() not in {o.lower() for o in rt.int8_ops}:
        return False, f"{op.kind} is not among {rt.name}'s INT8 ops on this target"
    return True, f"INT8 kernel in {rt.name}"


def _runtime_verdict_xnnpack(graph: Graph, target: Target, rt: RuntimeSpec) -> RuntimeVerdict:
    x = get("xnnpack")
    stem, members, blockers, stem_problem = x.find_group(graph)
    zeros, params = x.group_zero_fraction(members)
    zf = zeros / params if params else None
    structure_ok = stem_problem is None and not blockers
    problems: list[dict[str, str]] = []
    if stem_problem:
        problems.append({"layer": stem.name if stem else "-", "why": stem_problem})
    problems += [{"layer": op.name, "why": why} for op, why in blockers]
    if structure_ok and (zf is None or zf < x.MIN_ZERO_FRACTION):
        problems.append({"layer": "1x1 convolutions", "why": f"too few zeros: {100 * (zf or 0):.1f}% of the group's "
                                                             f"1x1 filter weights (needs at least "
                                                             f"{100 * x.MIN_ZERO_FRACTION:.1f}%)"})
    if structure_ok and not graph.has_densify:
        problems.append({"layer": "weights", "why": "no weights stored sparse (DENSIFY): edgekit sparsify writes them"})
    cpu = x.cpu_blocker(target)
    if cpu:
        problems.append({"layer": "CPU", "why": cpu})
    sparse = not problems
    member_ids = {op.index for op in members} | ({stem.index} if stem else set())
    blocked = {op.index: why for op, why in blockers}
    if stem and stem_problem:
        blocked[stem.index] = stem_problem
    layers = []
    for op in graph.ops:
        if op.kind in HIDDEN_OPS or (op.kind == "PAD" and any(o.fused_pad == op.index for o in graph.ops)):
            continue
        if op.index in blocked:
            s, why = False, f"blocks sparse inference: {blocked[op.index]}"
        elif x.is_sparse_conv(op) and op.index in member_ids:
            s = sparse
            why = (f"1x1 conv, XNNPACK sparse ({100 * op.zero_fraction:.0f}% zeros)" if sparse
                   else f"1x1 conv in the sparse group, but {problems[0]['why']}")
        elif op.index == (stem.index if stem else -1):
            s, why = False, "stem: 3x3 stride-2 conv that starts the sparse group (dense weights)"
        elif op.index in member_ids:
            s, why = False, f"{op.kind} runs inside the sparse group (CHW layout, dense weights)"
        else:
            s, why = False, f"outside the sparse group: {op.kind} runs dense"
        i8, i8_why = _int8(op, rt)
        wz = op.zero_fraction if op.weight_params else None
        layers.append(LayerVerdict(op.index, op.name, op.kind, s, why, i8, i8_why, wz))
    rv = RuntimeVerdict(rt.name, rt.format, rt.sparse_rules, sparse, structure_ok, zf, problems, layers=layers)
    rv.summary = _summary(rv, target)
    return rv


def _summary(rv: RuntimeVerdict, target: Target) -> str:
    from edgekit.targets import list_targets, load_target

    x = get("xnnpack")
    structural = [p for p in rv.blockers if p["layer"] != "CPU"]
    if structural:
        return f"not sparse on any device: {len(structural)} problem(s), first: {structural[0]['layer']}: " \
               f"{structural[0]['why']}"
    on, off = [], []
    for name in list_targets():
        try:
            t = load_target(name)
        except Exception:  # a broken target file must not break the check of another target
            continue
        if not any(r.sparse_rules == "xnnpack" for r in t.runtimes):
            continue
        if x.cpu_blocker(t):
            off.append("this AVX host" if t.is_host else f"{t.name} (AVX x86)")
        else:
            on.append(t.name)
    text = f"sparse on {' and '.join(x.SPARSE_FAMILIES)}" + (f" (targets: {', '.join(on)})" if on else "")
    if off:
        text += ", not on " + ", ".join(off)
    if rv.sparse:
        text += f"; target {target.name}: sparse"
    else:
        text += f"; target {target.name}: dense ({rv.blockers[0]['why']})"
    return text


def check_graph(graph: Graph, target: Target) -> list[RuntimeVerdict]:
    """Per-runtime verdicts for the target's TFLite-format runtimes and a no-sparse note for the others."""
    out = []
    for rt in target.runtimes:
        if rt.sparse_rules == "xnnpack":
            out.append(_runtime_verdict_xnnpack(graph, target, rt))
            continue
        why = get(rt.sparse_rules).reason(rt.name)
        layers = [LayerVerdict(op.index, op.name, op.kind, False, why, *_int8(op, rt),
                               op.zero_fraction if op.weight_params else None)
                  for op in graph.ops if op.kind not in HIDDEN_OPS and op.kind != "PAD"]
        out.append(RuntimeVerdict(rt.name, rt.format, rt.sparse_rules, False, False, None,
                                  [{"layer": "runtime", "why": why}], summary=f"{rt.name}: dense ({why})",
                                  layers=layers))
    return out


def model_graph(model: nn.Module, input_shape: tuple[int, ...], workdir: Path, sparse: bool = True) -> Graph:
    """Exports `model` to TFLite (and, with `sparse`, applies edgekit's sparse rewrite) and reads its op graph."""
    import numpy as np

    from edgekit.export import tflite, tflite_sparse

    x = np.zeros(input_shape, np.float32)
    was_training = model.training
    try:
        dense = tflite.export(model, x, workdir / "check_dense.tflite")
    finally:
        model.train(was_training)  # the exporter switches to eval; a pruning loop calling this keeps its mode
    if not sparse:
        return read_tflite(dense)
    tflite_sparse.rewrite(dense, workdir / "check_sparse.tflite")
    return read_tflite(workdir / "check_sparse.tflite")


def check_model(model: nn.Module, target: Target, input_shape: tuple[int, ...]) -> list[RuntimeVerdict]:
    """`edgekit check`: export to TFLite, store pruned weights sparse as sparsify would, and judge every layer.

    For big weights each conversion runs in its own child process (edgekit.child): the converters' memory leaves
    with it, and the peak is the larger conversion's, not their sum."""
    import tempfile

    from edgekit import child

    isolated = child.for_model(model)
    with tempfile.TemporaryDirectory(prefix="edgekit-check-") as d:
        graph = isolated("check's TFLite conversion", model_graph, model, input_shape, Path(d))
    verdicts = check_graph(graph, target)
    # Rule sets that judge the torch program itself (ExecuTorch's partitioner) replace the graph-based verdict.
    for i, rt in enumerate(target.runtimes):
        rule_set = get(rt.sparse_rules)
        if hasattr(rule_set, "model_verdict"):
            verdicts[i] = isolated(f"check's {rt.name} lowering", rule_set.model_verdict, model, tuple(input_shape),
                                   target, rt)
    return verdicts


def eligible_layers(graph: Graph, model: nn.Module) -> dict[str, str]:
    """Torch modules whose 1x1 filters sit in a structurally valid XNNPACK sparse group (zeros and CPU ignored)."""
    x = get("xnnpack")
    stem, members, blockers, stem_problem = x.find_group(graph, assume_rewrite=True)
    if stem_problem or blockers:
        return {}
    modules = dict(model.named_modules())
    return {op.name: f"1x1 conv, XNNPACK sparse ({op.out_channels}x{op.in_channels} filter)"
            for op in members if x.is_sparse_conv(op) and op.name in modules}


def prunable_layers(model: nn.Module, target: Target, input_shape: tuple[int, ...]) -> dict[str, str]:
    """{qualified module name: why it may be pruned for sparse inference} for layers the target's runtime can run sparse.

    Empty when no runtime of the target can run this model sparse (no sparse rules, a structural blocker, or a CPU
    that keeps the dense path, e.g. an AVX x86 host); `edgekit check` says why.

    Args:
        model: the torch model (not changed).
        target: the target whose runtimes' rules apply.
        input_shape: N,C,H,W the model is exported at.
    """
    import tempfile

    rts = [r for r in target.runtimes if r.sparse_rules == "xnnpack"]
    if not rts or get("xnnpack").cpu_blocker(target):
        return {}
    with tempfile.TemporaryDirectory(prefix="edgekit-rules-") as d:
        graph = model_graph(model, tuple(input_shape), Path(d), sparse=False)
    return eligible_layers(graph, model)
