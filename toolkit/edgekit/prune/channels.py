"""Channel (filter) pruning on Torch-Pruning's dependency graph: the result is a smaller dense model.

Torch-Pruning (DepGraph, Fang et al., CVPR 2023) traces the model and groups every dimension that must shrink
together: a convolution's output channels with its BatchNorm, the depthwise convolution after it, the input channels
of its consumers, every branch of a residual add, both sides of a squeeze-excitation multiply, the slices of a
concatenation. edgekit never tracks dependencies itself: it ranks the channels of each group by Torch-Pruning's
group magnitude importance, decides how many to keep (rounded to the target's channel multiple) and lets
Torch-Pruning remove them.

A group is named by its root layer (the first convolution or linear layer whose output channels it prunes).
Groups that reach the model's output (the classifier), and groups holding a grouped (not depthwise) convolution or a
depthwise convolution with a channel multiplier, are left as they are and say why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.errors import SettingsError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


@dataclass
class ChannelGroup:
    """Coupled channels that are pruned together."""

    name: str  # root layer (module name)
    channels: int
    layers: tuple[str, ...]  # modules whose output channels shrink (conv, linear, norm)
    consumers: tuple[str, ...]  # modules whose input channels shrink
    prunable: bool = True
    reason: str = ""  # why a group is left as it is

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "layers": list(self.layers),
                "consumers": list(self.consumers), "prunable": self.prunable, "reason": self.reason}


def round_channels(keep: float, total: int, multiple: int) -> int:
    """The channel count to keep: of the multiples of `multiple` below `total` and `total` itself, the one nearest
    to `keep` (a group with no more than one multiple of channels keeps them all)."""
    if multiple < 1:
        raise SettingsError(f"channel multiple must be >= 1, got {multiple}")
    if total <= multiple:
        return total
    allowed = [*range(multiple, total, multiple), total]
    return min(allowed, key=lambda c: (abs(c - keep), -c))  # a tie keeps more channels


def example_tensor(example: Any) -> torch.Tensor:
    import torch

    return example if isinstance(example, torch.Tensor) else torch.as_tensor(example)


class ChannelPruner:
    """Torch-Pruning's dependency graph of one model, with edgekit's group names.

    Args:
        model: pruned in place by `prune`.
        example: one input batch for tracing.
        ignored: module names whose output channels must not change (besides the output layer, always kept).
    """

    def __init__(self, model: nn.Module, example: Any, ignored: Iterable[str] = (), probe: bool = True) -> None:
        import torch
        import torch_pruning as tp

        self.model = model
        model.eval()
        modules = dict(model.named_modules())
        bad = [n for n in ignored if n not in modules]
        if bad:
            raise SettingsError(f"ignored layers {bad} are not modules of the model")
        self._tp = tp
        # Torch-Pruning traces through autograd: gradients must be on while it builds the graph.
        with torch.enable_grad():
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_tensor(example))
        self._ignored = [modules[n] for n in ignored]
        self._ignored_names = tuple(ignored)
        self._roots: dict[str, tuple[Any, Any]] = {}
        self.groups = self._collect()
        if probe:
            self._probe(example_tensor(example))

    def _probe(self, example: torch.Tensor) -> None:
        """Leaves as they are the groups whose pruning breaks the forward pass: shapes Torch-Pruning cannot see,
        e.g. a reshape to a constant shape in a graph imported from ONNX. One trial prune of every group first; only
        when that fails, each group alone."""
        cands = [g for g in self.groups if g.prunable and g.channels > 1]
        if not cands or self._breaks(cands, example) is None:
            return
        for g in cands:
            err = self._breaks([g], example)
            if err is not None:
                g.prunable, g.reason = False, f"pruning it breaks the forward pass ({err})"

    def _breaks(self, groups: list[ChannelGroup], example: torch.Tensor) -> str | None:
        """Why removing one channel of each group (on a copy) breaks the model, or None."""
        import copy

        import torch

        trial = copy.deepcopy(self.model)
        try:
            pruner = ChannelPruner(trial, example, self._ignored_names, probe=False)
            pruner.prune({g.name: [0] for g in groups})
            with torch.no_grad():
                trial(example)
        except Exception as e:  # any failure means: this group must stay as it is
            lines = str(e).strip().splitlines()
            return (lines[0] if lines else type(e).__name__)[:160]
        return None

    def _collect(self) -> list[ChannelGroup]:
        import torch.nn as nn

        dg, tp = self.dg, self._tp
        out: list[ChannelGroup] = []
        for group in dg.get_all_groups(ignored_layers=self._ignored,
                                       root_module_types=[nn.Conv1d, nn.Conv2d, nn.Linear]):
            root_dep = group[0].dep
            root = root_dep.target.module
            name = dg._module2name[root]
            layers, consumers, reason = [], [], ""
            for dep, _ in group:
                m = dep.target.module
                mname = dg._module2name.get(m) if isinstance(m, nn.Module) else None
                if not dep.target.outputs and dg.is_out_channel_pruning_fn(dep.handler):
                    reason = "reaches the model's output"
                if mname is None:
                    continue
                if dg.is_out_channel_pruning_fn(dep.handler):
                    layers.append(mname)
                    if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
                        depthwise = m.groups == m.in_channels == m.out_channels
                        if not depthwise:
                            reason = reason or f"{mname} is a grouped convolution (groups={m.groups})"
                else:
                    consumers.append(mname)
                    if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups and m.groups != m.out_channels:
                        reason = reason or f"{mname} is a grouped convolution (groups={m.groups})"
            if isinstance(root, tp.ops.TORCH_CONV) and root.groups == root.out_channels > 1 and root.groups != \
                    root.in_channels:
                reason = reason or f"{name} is a depthwise convolution with a channel multiplier"
            self._roots[name] = (root, root_dep.handler)
            out.append(ChannelGroup(name, dg.get_out_channels(root), tuple(dict.fromkeys(layers)),
                                    tuple(dict.fromkeys(consumers)), prunable=not reason, reason=reason))
        order = {n: i for i, (n, _) in enumerate(self.model.named_modules())}
        return sorted(out, key=lambda g: order.get(g.name, len(order)))

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise SettingsError(f"no channel group '{name}'; groups: {[g.name for g in self.groups]}")

    def importance(self, name: str) -> torch.Tensor:
        """Per-channel importance of a group: the mean over its layers of each channel's squared L2 weight norm
        (Torch-Pruning's GroupMagnitudeImportance, p=2, no normalisation)."""
        root, handler = self._roots[name]
        n = self.dg.get_out_channels(root)
        full = self.dg.get_pruning_group(root, handler, list(range(n)))
        imp = self._tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)(full)
        if imp is None:
            import torch

            return torch.zeros(n)
        return imp.detach().float().cpu()

    def prune(self, removed: Mapping[str, list[int]]) -> None:
        """Removes the given channels (indices into each group's current channels) from the model."""
        for name, idxs in removed.items():
            g = self.group(name)
            if not idxs:
                continue
            if not g.prunable:
                raise SettingsError(f"channel group {name} cannot be pruned: {g.reason}")
            if len(set(idxs)) >= g.channels or min(idxs) < 0 or max(idxs) >= g.channels:
                raise SettingsError(f"channel group {name}: cannot remove {len(idxs)} of {g.channels} channels")
            root, handler = self._roots[name]
            self.dg.get_pruning_group(root, handler, sorted(set(int(i) for i in idxs))).prune()
            g.channels = self.dg.get_out_channels(root)

    def history(self) -> list[list[Any]]:
        """Torch-Pruning's pruning history (root module, output side, indices), JSON-serialisable; `replay` redoes it
        on a fresh copy of the original model."""
        return [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in self.dg.pruning_history()]


def lowest(importance: torch.Tensor, n: int) -> list[int]:
    """Indices of the n least important channels (ties broken by position, so runs repeat)."""
    import torch

    if n <= 0:
        return []
    return sorted(torch.argsort(importance, stable=True)[:n].tolist())


def plan_removal(pruner: ChannelPruner, keep: Mapping[str, int]) -> dict[str, list[int]]:
    """Group name -> indices of its lowest-importance channels, so that `keep[name]` channels remain."""
    out = {}
    for name, k in keep.items():
        g = pruner.group(name)
        if k < g.channels:
            out[name] = lowest(pruner.importance(name), g.channels - k)
    return out


def prune_to_counts(model: nn.Module, example: Any, keep: Mapping[str, int], ignored: Iterable[str] = ()
                    ) -> list[list[Any]]:
    """Prunes the named groups to exactly `keep[name]` channels (lowest magnitude first), in place; returns the
    pruning history."""
    pruner = ChannelPruner(model, example, ignored)
    pruner.prune(plan_removal(pruner, keep))
    return pruner.history()


def replay(model: nn.Module, example: Any, history: list[list[Any]]) -> nn.Module:
    """Redoes a pruning history on `model` (the original architecture) in place and returns it."""
    import torch
    import torch_pruning as tp

    if not history:
        return model
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example_tensor(example))
    try:
        dg.load_pruning_history([[n, o, list(i)] for n, o, i in history])
    except (AttributeError, IndexError, RuntimeError, ValueError) as e:
        raise SettingsError(f"the channel-pruning record does not fit this model ({e})") from None
    return model


@dataclass
class WidthResult:
    """What `prune_to_widths` did."""

    groups: list[dict[str, Any]]  # per group: name, channels before, kept, fraction asked, layers, reason
    history: list[list[Any]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def kept(self) -> dict[str, int]:
        return {g["name"]: g["kept"] for g in self.groups}


def prune_to_widths(model: nn.Module, example: Any, widths: float | Mapping[str, float], multiple: int = 1,
                    ignored: Iterable[str] = ()) -> WidthResult:
    """Prunes every prunable channel group to a kept fraction of its channels (by magnitude), in place.

    Args:
        model: a torch model (pruned in place; the result is dense and smaller).
        example: one input batch.
        widths: one kept fraction for every group, or group name -> kept fraction (groups not named keep all).
        multiple: kept channel counts are multiples of this (the target's `channel_multiple`).
        ignored: module names whose output channels stay.
    """
    before = sum(p.numel() for p in model.parameters())
    pruner = ChannelPruner(model, example, ignored)
    names = {g.name for g in pruner.groups}
    if not isinstance(widths, (int, float)):
        unknown = sorted(set(widths) - names)
        if unknown:
            raise SettingsError(f"widths name unknown channel groups {unknown[:5]}; groups: {sorted(names)[:20]}")
    rows, keep = [], {}
    for g in pruner.groups:
        frac = float(widths) if isinstance(widths, (int, float)) else float(widths.get(g.name, 1.0))
        if not 0 < frac <= 1:
            raise SettingsError(f"kept channel fraction of {g.name} must be in (0, 1], got {frac}")
        k = round_channels(frac * g.channels, g.channels, multiple) if g.prunable else g.channels
        keep[g.name] = k
        rows.append({"name": g.name, "channels": g.channels, "kept": k, "fraction": frac, "layers": list(g.layers),
                     "reason": g.reason})
    pruner.prune(plan_removal(pruner, {n: k for n, k in keep.items() if pruner.group(n).prunable}))
    return WidthResult(rows, pruner.history(), before, sum(p.numel() for p in model.parameters()))
