"""Which layers are pruned, and at what rate: conv + linear by default, the first and last at a lower rate (as in
the lottery-ticket paper), restricted by the target runtime's sparse-inference rules when it has some.

The rules are not written here: `edgekit.rules.prunable_layers(model, target, input_shape)` (the runtime's own
description) says which layers the runtime can run sparse; this module only follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.errors import SettingsError
from edgekit.prune.patterns import Pattern

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.targets import Target

KINDS = ("conv+linear", "conv", "linear")


@dataclass
class LayerPlan:
    """The pruned layers (parameter name -> rate per round) and why the others are left dense."""

    rates: dict[str, float]
    dense: dict[str, str] = field(default_factory=dict)  # module name -> reason it is not pruned
    target_note: str = ""  # how the target's rules were used (or why not)
    sparse_ok: dict[str, str] = field(default_factory=dict)  # module name -> why the runtime runs it sparse


def candidates(model: nn.Module, kind: str | tuple[str, ...]) -> list[str]:
    """Module names of the conv / linear layers to consider, in definition order.

    Args:
        kind: "conv+linear", "conv", "linear", or a tuple of module names.
    """
    import torch.nn as nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    modules = dict(model.named_modules())
    if isinstance(kind, tuple):
        bad = [n for n in kind if n not in modules or not isinstance(modules[n], (*convs, nn.Linear))]
        if bad:
            names = [n for n, m in modules.items() if isinstance(m, (*convs, nn.Linear))]
            raise SettingsError(f"layers {bad} are not conv or linear layers of the model; choose from {names}")
        return [n for n in modules if n in kind]
    if kind not in KINDS:
        raise SettingsError(f"layers must be one of {list(KINDS)} or a list of layer names, got '{kind}'")
    types: tuple[type, ...] = {"conv+linear": (*convs, nn.Linear), "conv": convs, "linear": (nn.Linear,)}[kind]
    return [n for n, m in modules.items() if isinstance(m, types) and getattr(m, "weight", None) is not None]


def target_rules(model: nn.Module, target: Target | None, input_shape: tuple[int, ...]
                 ) -> tuple[dict[str, str] | None, str]:
    """({module: reason} of layers the target's runtime runs sparse, note) or (None, why the rules do not apply)."""
    if target is None:
        return None, "no target given: masks are not shaped for a runtime"
    with_rules = [r for r in target.runtimes if r.sparse_rules not in ("", "none")]
    if not with_rules:
        return None, f"target {target.name}: no runtime runs sparse weights, so every selected layer is pruned"
    try:
        from edgekit.rules import prunable_layers
    except ImportError as e:  # the rules module ships with the sparsify work; until then prune without it
        return None, f"target {target.name}: sparse-inference rules unavailable ({e}); masks follow the settings only"
    found = prunable_layers(model, target, tuple(input_shape))
    runtimes = ", ".join(f"{r.name} ({r.sparse_rules})" for r in with_rules)
    return dict(found), f"target {target.name}: sparse-inference rules of {runtimes}"


def plan_layers(model: nn.Module, settings: Any, target: Target | None, input_shape: tuple[int, ...],
                pattern: Pattern) -> LayerPlan:
    """Picks the pruned layers and their per-round rates.

    Args:
        settings: the prune stage's Settings (layers, rate, first_layer_scale, last_layer_scale, target_rules).
        target: the run's target (None: no runtime rules).
        input_shape: the model's input shape, for the rules that trace the model.
        pattern: layers whose weights cannot take the pattern stay dense.
    """
    modules = dict(model.named_modules())
    names = candidates(model, settings.layers)
    dense: dict[str, str] = {}
    allowed, note = (None, "target rules switched off (target_rules=off)")
    if settings.target_rules != "off":
        allowed, note = target_rules(model, target, input_shape)
        if allowed is None and settings.target_rules == "on":
            raise SettingsError(f"target_rules=on but {note}")
    if allowed is not None:
        if not any(n in allowed for n in names) and settings.target_rules == "auto":
            note += (" allow none of the selected layers to run sparse there (`edgekit check` says why), so "
                     "every selected layer is pruned: the model gets smaller when compressed, not faster")
            allowed = None
        elif not any(n in allowed for n in names):
            raise SettingsError(f"target_rules=on but the {note[note.index(':') + 2:]} allow no selected layer "
                                "to run sparse; `edgekit check` says why (or use target_rules=auto/off)")
        else:
            note += " choose the pruned layers; the others stay dense"
            for n in names:
                if n not in allowed:
                    dense[n] = "the target's runtime cannot run it sparse"
            names = [n for n in names if n in allowed]
    for n in list(names):
        why = pattern.fits(tuple(modules[n].weight.shape))
        if why:
            dense[n] = f"pattern {pattern.name}: {why}"
            names.remove(n)
    if not names:
        raise SettingsError("no layer left to prune" + (f" ({'; '.join(f'{k}: {v}' for k, v in dense.items())})"
                                                         if dense else ""))
    all_candidates = candidates(model, settings.layers)
    first, last = all_candidates[0], all_candidates[-1]
    rates = {}
    for n in names:
        scale = settings.first_layer_scale if n == first else settings.last_layer_scale if n == last else 1.0
        rates[f"{n}.weight"] = settings.rate * scale
    return LayerPlan(rates, dense, note, {n: allowed[n] for n in names} if allowed is not None else {})
