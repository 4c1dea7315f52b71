"""adapt: parameter-efficient fine-tuning (LoRA, LoRA-C, CP-LoRA, DoRA) on a frozen base, merged before export.

The stage trains adapters on the run's labelled training split, folds them into the base weights and returns a
plain model (no adapter module or operator), so export, verify and measure see an ordinary network with the base's
speed. Optionally the adapter alone is written as a small safetensors file beside the base weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.contract import Contract
from edgekit.errors import InputError, SettingsError

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

METHODS = ("lora", "lora-c", "cp-lora", "dora")
CONTRACT = Contract(needs=frozenset({"torch", "labels"}), changes=frozenset({"weights", "structure"}),
                    keeps_masks=False, masks_note="merging the adapters fills the pruned weights")
HEADS = ("keep", "train", "new")


@dataclass(frozen=True)
class Settings:
    method: str = field(default="cp-lora", metadata={"help": "lora, dora (peft), lora-c or cp-lora (edgekit, "
                                                             "for Conv2d; Linear layers get LoRA)"})
    rank: int = field(default=4, metadata={"help": "adapter rank"})
    alpha: float = field(default=0.0, metadata={"help": "update scale alpha / rank; 0: alpha = rank"})
    layers: tuple[str, ...] = field(default=("Conv2d", "Linear"),
                                    metadata={"help": "layer types (Conv2d, Linear), module names or globs"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "module names or globs never adapted"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input while training"})
    head: str = field(default="keep", metadata={"help": "keep (adapt like other layers), train (train the last "
                                                        "Linear in full) or new (fresh last Linear sized to the "
                                                        "data's classes, trained in full)"})
    train_norm: bool = field(default=False, metadata={"help": "also update BatchNorm running statistics (they "
                                                              "then differ from the base's)"})
    epochs: int = field(default=30, metadata={"help": "training epochs"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    max_train: int = field(default=0, metadata={"help": "use at most this many labelled training examples "
                                                        "(0: all)"})
    seed: int = field(default=0, metadata={"help": "seed for adapter initialisation and data order"})
    save_adapter: bool = field(default=True, metadata={"help": "also write artifacts/adapter.safetensors (the "
                                                               "adapter alone) and base.safetensors"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SettingsError(f"adapt: method must be one of {', '.join(METHODS)}, got '{self.method}'")
        if self.head not in HEADS:
            raise SettingsError(f"adapt: head must be one of {', '.join(HEADS)}, got '{self.head}'")
        if self.rank < 1:
            raise SettingsError(f"adapt: rank must be at least 1, got {self.rank}")
        if self.alpha < 0:
            raise SettingsError(f"adapt: alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise SettingsError(f"adapt: dropout must be in [0, 1), got {self.dropout}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1 or self.max_train < 0:
            raise SettingsError("adapt: epochs and batch_size must be >= 1, lr > 0, max_train >= 0")
        if not self.layers:
            raise SettingsError("adapt: layers is empty; name Conv2d, Linear, module names or globs")


def last_linear(model: nn.Module) -> str:
    """The name of the model's last nn.Linear (its classifier head, for the usual classification networks)."""
    import torch.nn as nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise SettingsError("adapt: head=train/new needs a model with an nn.Linear classifier; use head=keep")
    return names[-1]


def replace_head(model: nn.Module, name: str, num_classes: int, seed: int) -> None:
    import torch
    import torch.nn as nn

    from edgekit.adapters.decomposition import set_module

    old = model.get_submodule(name)
    torch.manual_seed(seed)
    set_module(model, name, nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device))


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    import numpy as np
    import torch

    from edgekit import adapters
    from edgekit.fileio import atomic_path
    from edgekit.train import fit, predict, quality

    data = ctx.data
    if not data.labelled:
        raise InputError("adapt trains on labelled data: pass --data digits, an image folder or an .npz with x and y")
    x, y = data.x_train, data.y_train
    if settings.max_train:
        # A class-stratified subset, so a small labelled budget still covers every class.
        rng = np.random.default_rng(settings.seed)
        order = rng.permutation(len(y))
        per = {c: order[y[order] == c] for c in np.unique(y)}
        take = np.concatenate([per[c][: max(1, settings.max_train // len(per))] for c in per])
        x, y = x[take], y[take]
    num_classes = int(max(y.max(), data.y_test.max())) + 1
    head = last_linear(model) if settings.head != "keep" else None
    before = quality(predict(model, data.x_test), data.y_test) if settings.head != "new" else {}
    if settings.head == "new":
        replace_head(model, head, num_classes, settings.seed)
    out_dim = predict(model, data.x_test[:1]).shape[-1]
    if num_classes > out_dim:
        raise InputError(f"the data has {num_classes} classes but the model has {out_dim} outputs; "
                         "set adapt.head=new to train a new classifier head")
    train_modules = (head,) if head else ()
    base_params = sum(p.numel() for p in model.parameters())
    # The base an adapter file applies to (fully trained modules such as a new head travel in the adapter file).
    base_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
                  if not any(k.startswith(t + ".") for t in train_modules)}
    torch.manual_seed(settings.seed)
    alpha = settings.alpha or float(settings.rank)
    adapted = adapters.add_adapters(model, settings.method, settings.rank, alpha, settings.layers,
                                    settings.dropout, settings.exclude, train_modules)
    n_adapter = adapters.adapter_param_count(model)
    n_head = sum(p.numel() for t in train_modules for p in model.get_submodule(t).parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    norms = (lambda: adapters.frozen_norms(model, train_modules)) if not settings.train_norm else _nothing
    with norms():
        steps = fit(model, x, y, epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                    seed=settings.seed, params=trainable, progress=ctx.progress,
                    description=f"adapt ({settings.method}, rank {settings.rank})")
    unmerged = predict(model, data.x_test)
    meta = {"method": settings.method, "rank": settings.rank, "alpha": alpha, "layers": [a.name for a in adapted],
            "train_modules": list(train_modules)}
    files = {}
    if settings.save_adapter:
        path = adapters.save_adapter(model, ctx.artifacts_dir / "adapter.safetensors", meta)
        files["adapter"] = {"path": path.name, "size_bytes": path.stat().st_size}
        ctx.add_file(path, "adapter (safetensors)", method=settings.method, rank=settings.rank)
    adapters.merge_adapters(model)
    merged = predict(model, data.x_test)
    if settings.save_adapter:
        from safetensors.torch import save_file

        base_path = ctx.artifacts_dir / "base.safetensors"
        with atomic_path(base_path) as tmp:
            save_file(base_state, str(tmp))
        files["base"] = {"path": base_path.name, "size_bytes": base_path.stat().st_size}
        ctx.add_file(base_path, "adapter base weights (safetensors)")
    merge_err = float(np.abs(merged - unmerged).max())
    after = quality(merged, data.y_test)
    metrics = {**{f"{k}_before": v for k, v in before.items()}, **after, "adapter_params": n_adapter,
               "head_params": n_head, "adapter_fraction_of_base": round(n_adapter / base_params, 5),
               "merge_max_abs_err": merge_err}
    ctx.record(metrics=metrics, details={
        "method": settings.method, "rank": settings.rank, "alpha": alpha, "train_examples": len(y),
        "steps": steps, "head": settings.head, "head_module": head, "head_out": num_classes if head else None,
        "layers": [a.as_dict() for a in adapted], "files": files,
        "note": "adapters merged into the base weights: exported artifacts hold plain layers only"})
    rows = "\n".join(f"| {a.name} | {a.kind} {list(a.shape)} | {a.impl} | {a.params} |" for a in adapted)
    ctx.add_section("Adapters", f"{settings.method} rank {settings.rank} (alpha {alpha:g}): {n_adapter} adapter "
                    f"parameters ({100 * n_adapter / base_params:.2f}% of the base), {n_head} head parameters; "
                    f"merged (max |merged - unmerged| = {merge_err:.2g}).\n\n"
                    f"| layer | base | adapter | params |\n|---|---|---|---|\n{rows}\n")
    return model


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def restore(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    """A resumed run rebuilds the new head (if any) at its trained size before loading the checkpoint."""
    if settings.head != "new":
        return model
    details = ctx.report["stages"][-1].details
    replace_head(model, details["head_module"], details["head_out"], settings.seed)
    return model
