"""Put adapters on a frozen model, count them, and fold them back into plain layers.

What comes from peft: LoRA for nn.Linear and nn.Conv2d (peft's conv LoRA: a KxK conv to r channels, then a 1x1 conv
back, i.e. a rank-r update of the kernel reshaped to C_out x (C_in*kh*kw)) and DoRA (magnitude + direction) for both,
injected with `peft.inject_adapter_in_model` and merged with each layer's own `merge()`.
What is written here: CP-LoRA and LoRA-C for nn.Conv2d (edgekit.adapters.layers), layer selection, the frozen-base
bookkeeping, parameter formulas and a merge that leaves no adapter module behind.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from edgekit.adapters.layers import CONV_ADAPTERS, _ConvAdapter
from edgekit.errors import SettingsError

METHODS = ("lora", "lora-c", "cp-lora", "dora")
LAYER_TYPES = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}
ADAPTER_TAG = "lora_"  # every adapter tensor (peft's and ours) has this in its name


@dataclass(frozen=True)
class AdaptedLayer:
    """One layer that got an adapter."""

    name: str
    kind: str  # "Conv2d" or "Linear"
    impl: str  # "peft-lora", "peft-dora", "cp-lora", "lora-c"
    shape: tuple[int, ...]  # the base weight's shape
    params: int  # adapter parameters actually created
    expected: int  # the closed-form count for this method, rank and shape

    def as_dict(self) -> dict:
        return asdict(self)


def expected_params(method: str, kind: str, shape: Sequence[int], rank: int) -> int:
    """Closed-form adapter parameter count of one layer.

    Args:
        method: lora, lora-c, cp-lora or dora.
        kind: "Conv2d" (shape = C_out, C_in/groups, kh, kw) or "Linear" (shape = out, in).
        shape: the base weight's shape.
        rank: the adapter rank.
    """
    if kind == "Linear":
        out_f, in_f = shape
        return rank * (in_f + out_f) + (out_f if method == "dora" else 0)
    out_c, in_c, kh, kw = shape
    if method in CONV_ADAPTERS:
        return CONV_ADAPTERS[method].expected_params(out_c, in_c, kh, kw, rank)
    # peft conv LoRA: A = Conv(C_in -> r, kh x kw), B = Conv(r -> C_out, 1x1); DoRA adds one magnitude per channel.
    return rank * (in_c * kh * kw + out_c) + (out_c if method == "dora" else 0)


def select_layers(model: nn.Module, layers: Sequence[str], exclude: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Layers matching any entry of `layers` (a type name such as Conv2d/Linear, a module name, or a glob)."""
    chosen = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, (nn.Conv2d, nn.Linear)) or _matches(name, mod, exclude):
            continue
        if _matches(name, mod, layers):
            chosen.append((name, mod))
    return chosen


def _matches(name: str, mod: nn.Module, patterns: Sequence[str]) -> bool:
    for p in patterns:
        if p in LAYER_TYPES:
            if type(mod) is LAYER_TYPES[p]:
                return True
        elif name == p or fnmatch.fnmatchcase(name, p):
            return True
    return False


def add_adapters(model: nn.Module, method: str, rank: int, alpha: float, layers: Sequence[str],
                 dropout: float = 0.0, exclude: Sequence[str] = (), train_modules: Sequence[str] = ()
                 ) -> list[AdaptedLayer]:
    """Freezes `model` and adds adapters in place; returns what was adapted.

    Args:
        model: changed in place.
        method: lora (peft), dora (peft), lora-c or cp-lora (ours for Conv2d; Linear layers get peft LoRA).
        rank, alpha, dropout: the usual LoRA settings (update scaled by alpha / rank).
        layers: type names (Conv2d, Linear), module names or globs to adapt.
        exclude: module names or globs never adapted (e.g. a head that is trained in full).
        train_modules: module names trained in full (e.g. a new classifier head); never adapted.
    """
    if method not in METHODS:
        raise SettingsError(f"unknown adapter method '{method}'; choose one of {', '.join(METHODS)}")
    modules = dict(model.named_modules())
    for t in train_modules:
        if t not in modules:
            raise SettingsError(f"train module '{t}' is not in the model")
    targets = select_layers(model, layers, (*exclude, *train_modules, *(f"{t}.*" for t in train_modules)))
    if not targets:
        raise SettingsError(f"no layer matches layers={list(layers)}; name Conv2d, Linear, module names or globs")
    for p in model.parameters():
        p.requires_grad_(False)
    adapted: list[AdaptedLayer] = []
    peft_names: list[str] = []
    for name, mod in targets:
        if isinstance(mod, nn.Conv2d) and mod.groups > 1 and method in ("lora", "dora"):
            continue  # peft cannot merge grouped-conv LoRA; reported as not adapted
        if isinstance(mod, nn.Conv2d) and method in CONV_ADAPTERS:
            wrapper = CONV_ADAPTERS[method](mod, rank, alpha, dropout)
            _set_module(model, name, wrapper)
            adapted.append(AdaptedLayer(name, "Conv2d", method, tuple(mod.weight.shape), wrapper.adapter_numel(),
                                        expected_params(method, "Conv2d", mod.weight.shape, rank)))
        else:
            peft_names.append(name)
    if peft_names:
        _inject_peft(model, method, rank, alpha, dropout, peft_names)
        modules = dict(model.named_modules())
        for name in peft_names:
            layer = modules[name]
            base = layer.get_base_layer()
            kind = "Conv2d" if isinstance(base, nn.Conv2d) else "Linear"
            n = sum(p.numel() for pn, p in layer.named_parameters() if ADAPTER_TAG in pn)
            adapted.append(AdaptedLayer(name, kind, "peft-dora" if method == "dora" else "peft-lora",
                                        tuple(base.weight.shape), n,
                                        expected_params(method, kind, base.weight.shape, rank)))
    for n, p in model.named_parameters():
        if ADAPTER_TAG in n:
            p.requires_grad_(True)
    modules = dict(model.named_modules())
    for t in train_modules:
        for p in modules[t].parameters():
            p.requires_grad_(True)
    order = {n: i for i, (n, _) in enumerate(targets)}
    return sorted(adapted, key=lambda a: order[a.name])


def _inject_peft(model: nn.Module, method: str, rank: int, alpha: float, dropout: float, names: list[str]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    # A full-match regex over exact names: peft's list form also matches suffixes ("1" would hit "layer.1").
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                        use_dora=method == "dora", bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inject_adapter_in_model(config, model)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def adapter_param_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ADAPTER_TAG in n)


def trainable_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_adapters(model: nn.Module) -> bool:
    return any(ADAPTER_TAG in n for n, _ in model.named_parameters())


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Folds every adapter into its base layer and puts the plain layer back; the model then has no adapter op."""
    import sys

    # peft is slow to import (it pulls in transformers); a model without peft layers never needs it.
    tuner_layer: type = type(None)
    if "peft" in sys.modules:
        from peft.tuners.tuners_utils import BaseTunerLayer as tuner_layer
    replacements = []
    for name, mod in model.named_modules():
        if isinstance(mod, _ConvAdapter):
            replacements.append((name, mod.merged_layer()))
        elif isinstance(mod, tuner_layer):
            mod.merge()
            replacements.append((name, mod.get_base_layer()))
    for name, plain in replacements:
        _set_module(model, name, plain)
    if has_adapters(model):
        left = [n for n, _ in model.named_parameters() if ADAPTER_TAG in n]
        raise RuntimeError(f"adapters left after merging: {left[:3]}")
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@contextlib.contextmanager
def frozen_norms(model: nn.Module, keep_training: Sequence[str] = ()) -> Iterator[None]:
    """Batch norms keep their running statistics while the model trains (a frozen base is frozen in full).

    Without this, training adapters would silently re-estimate every BN's statistics: a change that is neither an
    adapter parameter nor in the adapter file.
    """
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not any(
                name == k or name.startswith(k + ".") for k in keep_training):
            handles.append(mod.register_forward_pre_hook(lambda m, _args: setattr(m, "training", False)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
