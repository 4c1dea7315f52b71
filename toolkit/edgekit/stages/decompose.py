"""decompose: replace KxK convolutions by CP (1x1 -> depthwise Kx1 -> depthwise 1xK -> 1x1) or Tucker-2
(1x1 -> KxK core -> 1x1) sequences fitted with tensorly, with ranks from a parameter or a measured latency budget,
then fine-tune. With a_priori the same structure is built with fresh weights and trained from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.contract import Contract
from edgekit.errors import InputError, SettingsError

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

METHODS = ("cp", "tucker")
BUDGETS = ("params", "latency")
MASKS = ("keep", "skip", "drop")


@dataclass(frozen=True)
class Settings:
    method: str = field(default="tucker", metadata={"help": "cp or tucker (Tucker-2 over the channel modes)"})
    layers: tuple[str, ...] = field(default=("Conv2d",), metadata={
        "help": "Conv2d, module names or globs; only dense KxK convs (K > 1) are decomposed"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "module names or globs left as they are"})
    budget: str = field(default="params", metadata={"help": "params (ratio of each layer's parameters) or latency "
                                                            "(ratio of each layer's measured ONNX Runtime latency)"})
    ratio: float = field(default=0.3, metadata={"help": "each decomposed layer keeps at most this fraction of its "
                                                        "parameters (or latency)"})
    rank: int = field(default=0, metadata={"help": "fixed rank for every layer (Tucker: R_in = R_out); 0: from "
                                                   "the budget"})
    a_priori: bool = field(default=False, metadata={"help": "build the structure with fresh weights and train "
                                                            "from scratch instead of fitting the trained kernels"})
    n_iter: int = field(default=50, metadata={"help": "tensorly ALS / HOOI iterations per layer"})
    epochs: int = field(default=10, metadata={"help": "fine-tuning epochs after decomposing (0: none)"})
    lr: float = field(default=1e-3, metadata={"help": "fine-tuning Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "fine-tuning batch size"})
    min_params: int = field(default=1024, metadata={"help": "convs with fewer weights stay as they are (little "
                                                            "to gain; e.g. a first conv on 1-3 input channels)"})
    norms: str = field(default="auto", metadata={"help": "BatchNorm statistics while fine-tuning: auto (re-estimated "
                                                         "when training on labels, frozen when distilling on "
                                                         "unlabelled inputs), train or frozen"})
    seed: int = field(default=0, metadata={"help": "seed for factor initialisation and data order"})
    masks: str = field(default="keep", metadata={
        "help": "pruned layers (masks of an earlier prune): keep (decompose them and prune each factor to the "
                "layer's density, masks re-applied while fine-tuning), skip (leave them pruned, not decomposed) or "
                "drop (decompose them dense; refused after prune)"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SettingsError(f"decompose: method must be cp or tucker, got '{self.method}'")
        if self.budget not in BUDGETS:
            raise SettingsError(f"decompose: budget must be params or latency, got '{self.budget}'")
        if not 0 < self.ratio <= 1:
            raise SettingsError(f"decompose: ratio must be in (0, 1], got {self.ratio}")
        if self.rank < 0 or self.n_iter < 1 or self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise SettingsError("decompose: rank and epochs must be >= 0, n_iter and batch_size >= 1, lr > 0")
        if self.norms not in ("auto", "train", "frozen"):
            raise SettingsError(f"decompose: norms must be auto, train or frozen, got '{self.norms}'")
        if self.masks not in MASKS:
            raise SettingsError(f"decompose: masks must be keep, skip or drop, got '{self.masks}'")
        if self.min_params < 0:
            raise SettingsError(f"decompose: min_params must be >= 0, got {self.min_params}")
        if self.a_priori and self.epochs == 0:
            raise SettingsError("decompose: a_priori builds untrained layers; give epochs > 0 to train them")


def contract(settings: Settings) -> Contract:
    return Contract(needs=frozenset({"torch"} | ({"labels"} if settings.a_priori else set())),
                    changes=frozenset({"weights", "structure"}), keeps_masks=settings.masks != "drop",
                    masks_note="decompose.masks=drop fills the pruned weights; set decompose.masks=keep or skip",
                    labels_note=" for a_priori")


def plan_layers(model: nn.Module, settings: Settings, example: Any = None, threads: int = 1) -> list:
    """The per-layer decomposition plan (LayerPlan list); layers the method would not shrink are left out."""
    from edgekit.adapters import decomposition as dec
    from edgekit.adapters import select_layers

    targets = [(n, m) for n, m in select_layers(model, settings.layers, settings.exclude)
               if dec.decomposable(m) and m.weight.numel() >= settings.min_params]
    shapes = {}
    if settings.budget == "latency" and settings.rank == 0:
        from edgekit.adapters.latency import input_shapes

        shapes = input_shapes(model, example, [n for n, _ in targets])
    plan = []
    for name, conv in targets:
        shape = tuple(conv.weight.shape)
        if settings.rank:
            r = settings.rank
            ranks = (r,) if settings.method == "cp" else (min(r, shape[1]), min(r, shape[0]))
        elif settings.budget == "params":
            ranks = dec.ranks_for_ratio(settings.method, shape, settings.ratio)
        else:
            ranks = _ranks_for_latency(conv, settings, shapes[name], threads)
            if ranks is None:
                continue
        after = dec.params_after(settings.method, shape, ranks)
        before = dec.conv_params(shape)
        if after >= before:
            continue
        plan.append(dec.LayerPlan(name, settings.method, ranks, shape, before, after))
    return plan


def _ranks_for_latency(conv: nn.Conv2d, settings: Settings, input_shape: tuple[int, ...], threads: int):
    """The largest candidate ranks whose measured latency is within ratio x the original layer's; None if none."""
    from edgekit.adapters import decomposition as dec
    from edgekit.adapters.latency import time_candidates

    shape = tuple(conv.weight.shape)
    cands = [r for r in dec.candidate_ranks(settings.method, shape) if dec.params_after(settings.method, shape, r)
             < dec.conv_params(shape)]
    if not cands:
        return None
    seqs = [[conv]] + [list(dec.build(conv, settings.method, r)) for r in cands]
    ms = time_candidates(seqs, input_shape, threads)
    ok = [r for r, t in zip(cands, ms[1:], strict=True) if t <= settings.ratio * ms[0]]
    return ok[-1] if ok else None


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    import torch

    from edgekit.adapters import decomposition as dec
    from edgekit.train import predict, quality

    data = ctx.data
    if settings.a_priori and not data.labelled:
        raise InputError("decompose a_priori trains from scratch and needs labelled data (--data)")
    plan = plan_layers(model, settings, ctx.example_input, ctx.threads)
    masks = getattr(ctx, "masks", None)  # pruning masks of an earlier stage
    if masks is not None and settings.masks == "skip":
        plan = [p for p in plan if f"{p.name}.weight" not in masks]
    if not plan:
        raise SettingsError("decompose: no layer to decompose (no dense KxK Conv2d matches, or none would shrink "
                            "within the budget); check layers/ratio")
    convs_before = _conv_params(model)
    ref = ctx.reference_logits() if not data.labelled else None
    before = quality(predict(model, data.x_test), data.y_test, ref)
    torch.manual_seed(settings.seed)
    dec.apply_plan(model, plan, fit_factors=not settings.a_priori, n_iter=settings.n_iter, seed=settings.seed,
                   progress=ctx.progress)
    if settings.a_priori:
        _reset_parameters(model)
    if masks is not None:
        masks = carry_masks(model, plan, masks, settings.masks)
        masks.apply(model)
        ctx.masks = masks
    decomposed = quality(predict(model, data.x_test), data.y_test, ref)
    steps = _fine_tune(model, settings, ctx, masks) if settings.epochs else 0
    after = quality(predict(model, data.x_test), data.y_test, ref)
    p_before = sum(p.params_before for p in plan)
    p_after = sum(p.params_after for p in plan)
    convs_after = _conv_params(model)
    metric = data.quality_metric
    ctx.record(metrics={f"{metric}_before": before[metric], f"{metric}_decomposed": decomposed[metric],
                        **after, "conv_params_before": convs_before, "conv_params_after": convs_after,
                        "conv_param_ratio": round(convs_before / convs_after, 3),
                        "decomposed_layer_params_before": p_before, "decomposed_layer_params_after": p_after},
               details={"method": settings.method, "budget": settings.budget, "a_priori": settings.a_priori,
                        "steps": steps, "plan": [p.as_dict() for p in plan],
                        "masks": None if masks is None else {"mode": settings.masks, **{
                            k: v for k, v in masks.sparsity_report().items() if k != "layers"}},
                        "latency_budget_source": ("measured per layer in ONNX Runtime on this machine"
                                                  if settings.budget == "latency" and not settings.rank else None)})
    rows = "\n".join(f"| {p.name} | {list(p.shape)} | {list(p.ranks)} | {p.params_before} | {p.params_after} |"
                     for p in plan)
    ctx.add_section("Decomposition", f"{settings.method}: {len(plan)} convs, {p_before} -> {p_after} parameters "
                    f"({p_before / p_after:.2f}x fewer; all convs of the model: {convs_before} -> {convs_after}, "
                    f"{convs_before / convs_after:.2f}x); {metric} {before[metric]:.4f} -> "
                    f"{decomposed[metric]:.4f} (decomposed) -> {after[metric]:.4f} (fine-tuned).\n\n"
                    f"| layer | kernel | ranks | params | after |\n|---|---|---|---|---|\n{rows}\n")
    return model


def _fine_tune(model: nn.Module, settings: Settings, ctx: RunContext, masks: Any) -> int:
    """Fine-tunes the decomposed model (masks re-applied after every step); returns the optimiser steps."""
    import contextlib

    import numpy as np

    from edgekit.adapters import frozen_norms
    from edgekit.train import fit

    data = ctx.data
    # Without labels the model learns the uncompressed model's top-1 decisions on the training inputs.
    y = data.y_train if data.labelled else ctx.reference_logits("train").reshape(len(data.x_train), -1).argmax(1)
    # Distilling on a few (possibly synthetic) inputs must not re-estimate BN statistics; training on the task's
    # labelled data should, since the decomposed convs change what each BN sees.
    freeze = settings.norms == "frozen" or (settings.norms == "auto" and not data.labelled)
    norms = frozen_norms(model) if freeze and not settings.a_priori else contextlib.nullcontext()
    with norms:
        return fit(model, data.x_train, np.asarray(y, np.int64), epochs=settings.epochs, lr=settings.lr,
                   batch_size=settings.batch_size, seed=settings.seed, progress=ctx.progress,
                   description=f"fine-tune ({settings.method})",
                   after_step=(lambda m, _: masks.apply(m)) if masks is not None else None)


def carry_masks(model: nn.Module, plan: list, masks: Any, mode: str) -> Any:
    """The pruning masks after decomposition: untouched layers keep theirs; a pruned layer that was decomposed gives
    its density to its factors (keep: each dense factor conv keeps that fraction of its largest weights) or loses
    its mask (drop). Depthwise factors stay dense (a few weights each, and pruning them costs the most accuracy)."""
    import torch

    from edgekit.masks import Mask

    replaced = {p.name for p in plan}
    out = {k: v for k, v in masks.items() if k.rpartition(".")[0] not in replaced}
    if mode != "keep":
        return Mask(out)
    for name in replaced:
        old = masks.get(f"{name}.weight")
        if old is None:
            continue
        density = float(old.float().mean())
        for child, conv in model.get_submodule(name).named_children():
            if getattr(conv, "groups", 1) != 1 or getattr(conv, "weight", None) is None:
                continue
            w = conv.weight.detach().abs().flatten()
            keep = torch.zeros_like(w, dtype=torch.bool)
            keep[w.argsort(descending=True, stable=True)[: max(1, round(density * w.numel()))]] = True
            out[f"{name}.{child}.weight"] = keep.reshape(conv.weight.shape)
    return Mask(out)


def _conv_params(model: nn.Module) -> int:
    import torch.nn as nn

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def _reset_parameters(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def restore(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    """Rebuilds the decomposed structure recorded by a finished run, so its checkpoint loads into it."""
    from edgekit.adapters import decomposition as dec

    plan = [dec.LayerPlan.from_dict(d) for d in ctx.report["stages"][-1].details["plan"]]
    return dec.apply_plan(model, plan, fit_factors=False)
