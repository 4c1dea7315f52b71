"""sparsify: store the pruned weights of the layers the target's runtime runs sparse as TFLite sparse tensors.

Writes artifacts/<name>.tflite: the masked model converted once by litert-torch, then rewritten so XNNPACK can take
its sparse path (export/tflite_sparse.py: CSR filters behind DENSIFY, MEAN(keep_dims) -> RESHAPE -> FC). The stage
judges the result with the target's rules (edgekit.rules, as `edgekit check` does) and puts the verdicts in the
report. With `oneshot_sparsity` it first prunes the eligible 1x1 convolutions by magnitude (no training), to study
speed and size of untrained zoo models; otherwise it keeps the zeros the model has (e.g. from the prune stage).
The dense artifacts written later by `export` keep the zeros: ONNX Runtime has no sparse convolution kernels.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.contract import Contract
from edgekit.errors import SettingsError

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext


@dataclass(frozen=True)
class Settings:
    oneshot_sparsity: float = field(default=0.0, metadata={
        "help": "one-shot magnitude pruning (no training) of the eligible 1x1 convolutions to this fraction of zeros "
                "per layer; 0 keeps the zeros the model already has"})
    min_zero_fraction: float = field(default=0.5, metadata={
        "help": "store a 1x1 filter sparse only from this fraction of zeros (below it CSR indices cost more bytes)"})
    name: str = field(default="model_sparse", metadata={"help": "artifact file name without suffix"})
    check_inputs: int = field(default=8, metadata={"help": "inputs the sparse file is compared on with the dense one"})

    def __post_init__(self) -> None:
        if not 0 <= self.oneshot_sparsity < 1:
            raise SettingsError(f"sparsify: oneshot_sparsity must be in [0, 1), got {self.oneshot_sparsity}")
        if not 0 <= self.min_zero_fraction <= 1:
            raise SettingsError(f"sparsify: min_zero_fraction must be in [0, 1], got {self.min_zero_fraction}")
        if self.check_inputs < 1:
            raise SettingsError(f"sparsify: check_inputs must be at least 1, got {self.check_inputs}")


def contract(settings: Settings) -> Contract:
    """Writes a sparse artifact; with oneshot_sparsity it also prunes (adding to the pruning masks)."""
    changes = {"artifacts"} | ({"weights", "masks"} if settings.oneshot_sparsity > 0 else set())
    return Contract(needs=frozenset({"torch"}), changes=frozenset(changes))


def candidate_convs(model: nn.Module) -> dict[str, nn.Module]:
    """Torch convolutions that export as 1x1, stride-1, unpadded, ungrouped CONV_2D (what XNNPACK runs sparse)."""
    import torch.nn as nn

    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
            and m.stride == (1, 1) and m.groups == 1 and m.padding in ((0, 0), "valid") and m.dilation == (1, 1)}


def magnitude_prune(modules: dict[str, nn.Module], sparsity: float) -> dict[str, float]:
    """Zeros the smallest-magnitude `sparsity` fraction of each module's weight; returns the zero fraction reached."""
    import torch

    out = {}
    with torch.no_grad():
        for name, m in modules.items():
            w = m.weight
            k = int(round(sparsity * w.numel()))
            if k > 0:
                order = w.abs().flatten().argsort(stable=True)  # ties broken by position: exactly k zeros
                w.view(-1)[order[:k]] = 0
            out[name] = float((w == 0).float().mean())
    return out


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    from edgekit import rules
    from edgekit.export import tflite, tflite_sparse

    rt = ctx.target.runtime_for("tflite")
    if rt is None or rt.sparse_rules == "none":
        why = f"target {ctx.target.name} has no TFLite runtime with sparse kernels; nothing to store sparse"
        ctx.add_section("Sparse inference (edgekit check)", why)
        ctx.record(details={"skipped": why})
        return model
    candidates = candidate_convs(model)
    before = {n: m.weight.detach().clone() for n, m in candidates.items()}
    if settings.oneshot_sparsity > 0:
        magnitude_prune(candidates, settings.oneshot_sparsity)
    x = ctx.example_input
    with tempfile.TemporaryDirectory(prefix="edgekit-sparsify-") as d:
        dense = tflite.export(model, x, Path(d) / "masked.tflite")
        graph = rules.read_tflite(dense)
        eligible = {n: why for n, why in rules.eligible_layers(graph, model).items() if n in candidates}
        pruned_but_not_eligible = [n for n in candidates if n not in eligible]
        if pruned_but_not_eligible and settings.oneshot_sparsity > 0:
            # Zeros where no runtime will skip them only cost accuracy: put those weights back and convert again.
            import torch

            with torch.no_grad():
                for n in pruned_but_not_eligible:
                    candidates[n].weight.copy_(before[n])
            dense = tflite.export(model, x, Path(d) / "masked2.tflite")
        path = ctx.artifacts_dir / f"{settings.name}.tflite"
        info = tflite_sparse.rewrite(dense, path, settings.min_zero_fraction)
        err = _compare(dense, path, ctx.data.x_test[: settings.check_inputs], ctx.threads)
        if info["sparse_filters"] == 0:
            # Nothing the runtime could skip: no sparse artifact, only the verdicts saying why.
            verdicts = rules.check_graph(rules.read_tflite(path), ctx.target)
            path.unlink()
            why = next((b["why"] for v in verdicts for b in v.blockers), "no 1x1 filter has enough zeros")
            ctx.record(details={"skipped": f"no filter stored sparse: {why}",
                                "check": [{k: v for k, v in rv.as_dict().items() if k != "layers"} for rv in verdicts]})
            ctx.add_section("Sparse inference (edgekit check)", check_markdown(verdicts))
            return model
    verdicts = rules.check_graph(rules.read_tflite(path), ctx.target)
    zero = {n: float((candidates[n].weight == 0).float().mean()) for n in eligible}
    if settings.oneshot_sparsity > 0:
        _add_masks(ctx, model, eligible)
    ctx.add_artifact(path, "tflite", tflite_sparse.RUNTIME, precision="fp32", sparse=True, reference="torch")
    total = sum(candidates[n].weight.numel() for n in eligible)
    zeros = sum(int((candidates[n].weight == 0).sum()) for n in eligible)
    ctx.record(
        metrics={"eligible_layers": len(eligible), "eligible_zero_fraction": zeros / total if total else 0.0,
                 "size_dense_bytes": info["size_dense_bytes"], "size_sparse_bytes": info["size_sparse_bytes"],
                 "size_ratio": info["size_sparse_bytes"] / info["size_dense_bytes"],
                 "sparse_vs_dense_max_abs_err": err,
                 "runs_sparse": {v.runtime: v.sparse for v in verdicts}},
        details={"oneshot_sparsity": settings.oneshot_sparsity, "layer_zero_fraction": zero,
                 "sparse_filters": info["sparse_filters"], "mean_reshape_fc": info["mean_reshape_fc"],
                 "check": [{k: v for k, v in rv.as_dict().items() if k != "layers"} for rv in verdicts]})
    ctx.add_section("Sparse inference (edgekit check)", check_markdown(verdicts, info, err))
    return model


def _add_masks(ctx: RunContext, model: nn.Module, layers: dict[str, Any]) -> None:
    """The one-shot zeros join the run's pruning masks, so later stages keep them."""
    from edgekit.masks import Mask

    params = dict(model.named_parameters())
    masks = dict(ctx.masks or {})
    for n in layers:
        w = params[f"{n}.weight"]
        masks[f"{n}.weight"] = (w != 0) & masks[f"{n}.weight"] if f"{n}.weight" in masks else w != 0
    ctx.masks = Mask(masks)


def _compare(dense: Path, sparse: Path, inputs: np.ndarray, threads: int) -> float:
    """Largest output difference between the dense masked file and its sparse rewrite (float: should be ~0)."""
    from edgekit.runtimes import load_runner

    a, b = load_runner("litert", dense, threads), load_runner("litert", sparse, threads)
    n = a.input_shape[0] if a.input_shape else 1
    err = 0.0
    for i in range(0, max(len(inputs) - len(inputs) % n, n), n):
        xi = np.asarray(inputs[i:i + n], np.float32).reshape(a.input_shape)
        err = max(err, float(np.abs(np.asarray(a(xi)) - np.asarray(b(xi))).max()))
    return err


def check_markdown(verdicts: list[Any], info: dict[str, Any] | None = None, err: float | None = None) -> str:
    """The report section: whole-model verdicts, then the per-layer table of the first sparse-capable runtime."""
    lines = []
    for v in verdicts:
        lines.append(f"- **{v.runtime}** ({v.format}, rules `{v.rules}`): {v.summary}")
    if info:
        lines.append(f"- sparse TFLite: {info['sparse_filters']} filters stored sparse, "
                     f"{info['size_sparse_bytes']:,} bytes vs {info['size_dense_bytes']:,} dense "
                     f"({100 * info['size_sparse_bytes'] / info['size_dense_bytes']:.0f}%); max |sparse - dense| "
                     f"= {err:.3g}")
    lines.append("- the ONNX artifact keeps the zeros densely: ONNX Runtime has no sparse convolution kernels, so "
                 "there is no speedup there (the file only shrinks when compressed)")
    main = next((v for v in verdicts if v.rules != "none"), None)
    if main is not None:
        lines += ["", f"Per layer ({main.runtime}):", "", "| # | layer | op | zeros | sparse | why | INT8 |",
                  "|---|---|---|---|---|---|---|"]
        for lv in main.layers:
            z = "–" if lv.zero_fraction is None else f"{100 * lv.zero_fraction:.0f}%"
            lines.append(f"| {lv.index} | {lv.name} | {lv.op} | {z} | {'yes' if lv.sparse else 'no'} | "
                         f"{lv.sparse_reason} | {'yes' if lv.int8 else 'no'} |")
    return "\n".join(lines)
