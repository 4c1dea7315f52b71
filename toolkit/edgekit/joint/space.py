"""The joint search space: per channel group a width, per layer a precision and (on targets whose runtime runs
sparse weights) an unstructured sparsity, plus the runtime the artifact is built for.

A `Decision` lists only what differs from the unmodified model (pruned groups, INT8 layers, sparse layers), so two
decisions that build the same artifact compare equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgekit.prune.channels import round_channels

FLOAT, INT8 = "float", "int8"


@dataclass(frozen=True)
class Decision:
    """One candidate: what every layer gets."""

    runtime: str
    widths: tuple[tuple[str, int], ...] = ()  # pruned groups: (group name, kept channels)
    int8: tuple[str, ...] = ()  # layers quantised to INT8 (per-channel weights); the others stay float
    sparsity: tuple[tuple[str, float], ...] = ()  # layers pruned unstructured: (layer, fraction of zeros)
    label: str = field(default="", compare=False)

    def key(self) -> str:
        return json.dumps([self.runtime, list(self.widths), list(self.int8), list(self.sparsity)])

    def width_key(self) -> str:
        """Identity of the torch model this decision trains (runtime and precision do not change it)."""
        return json.dumps([list(self.widths), list(self.sparsity)])

    def as_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "widths": dict(self.widths), "int8": list(self.int8),
                "sparsity": dict(self.sparsity), "label": self.label}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(d["runtime"], tuple(sorted((k, int(v)) for k, v in d.get("widths", {}).items())),
                   tuple(sorted(d.get("int8", []))), tuple(sorted((k, float(v)) for k, v in d.get("sparsity", {}).items())),
                   d.get("label", ""))


@dataclass(frozen=True)
class SpaceGroup:
    name: str
    channels: int
    choices: dict[float, int]  # kept fraction -> kept channels (after rounding)
    layers: tuple[str, ...] = ()


@dataclass
class JointSpace:
    """What the search may decide, for one model on one target."""

    groups: list[SpaceGroup]
    layers: list[str]  # quantisable layers (conv / linear module names)
    runtimes: list[str]
    dimensions: tuple[str, ...]
    sparse_layers: list[str] = field(default_factory=list)
    sparsities: tuple[float, ...] = (0.0,)
    fixed: list[SpaceGroup] = field(default_factory=list)  # channel groups that keep their width, and why
    fixed_reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, groups: list[Any], layers: list[str], runtimes: list[str], dimensions: tuple[str, ...],
              widths: tuple[float, ...], multiple: int, sparse_layers: list[str] | None = None,
              sparsities: tuple[float, ...] = (0.0,)) -> JointSpace:
        """groups: ChannelGroups (edgekit.prune.channels); fractions that round to the same count are merged."""
        space_groups, fixed, reasons = [], [], {}
        for g in groups:
            choices: dict[float, int] = {}
            for f in sorted({1.0, *widths}, reverse=True):
                k = round_channels(f * g.channels, g.channels, multiple)
                if k not in choices.values():
                    choices[f] = k
            sg = SpaceGroup(g.name, g.channels, choices, tuple(g.layers))
            if g.prunable and len(choices) > 1 and "width" in dimensions:
                space_groups.append(sg)
                continue
            fixed.append(sg)
            reasons[g.name] = (g.reason if not g.prunable else "width is not searched" if "width" not in dimensions
                               else f"{g.channels} channels: no smaller multiple of {multiple}")
        sparse = list(sparse_layers or []) if "sparsity" in dimensions else []
        return cls(space_groups, list(layers), list(runtimes), dimensions, sparse,
                   tuple(sorted({0.0, *sparsities})), fixed, reasons)

    def make(self, runtime: str, width: float | dict[str, float] = 1.0, int8: bool | set[str] = False,
             sparsity: float | dict[str, float] = 0.0, label: str = "") -> Decision:
        """A decision from fractions: one width (or one per group), all layers INT8 or a set, one sparsity."""
        widths = []
        for g in self.groups:
            f = width if isinstance(width, (int, float)) else width.get(g.name, 1.0)
            k = round_channels(f * g.channels, g.channels, 1)
            k = min(g.choices.values(), key=lambda c: (abs(c - k), -c))
            if k < g.channels:
                widths.append((g.name, k))
        q = set(self.layers) if int8 is True else set() if int8 is False else set(int8)
        sp = {n: (sparsity if isinstance(sparsity, (int, float)) else sparsity.get(n, 0.0)) for n in self.sparse_layers}
        sp = {n: v for n, v in sp.items() if v > 0}
        if "precision" not in self.dimensions or runtime is None:
            q = set()
        q -= set(sp)  # sparse kernels are float kernels
        return Decision(runtime, tuple(sorted(widths)), tuple(sorted(q)), tuple(sorted(sp.items())), label)

    def suggest(self, trial: Any) -> Decision:
        """An Optuna trial's decision (one categorical per group, layer and the runtime)."""
        runtime = trial.suggest_categorical("runtime", self.runtimes)
        widths = {g.name: trial.suggest_categorical(f"w:{g.name}", list(g.choices)) for g in self.groups}
        sp = {n: trial.suggest_categorical(f"s:{n}", list(self.sparsities)) for n in self.sparse_layers}
        q = set()
        if "precision" in self.dimensions:
            q = {n for n in self.layers if trial.suggest_categorical(f"p:{n}", [FLOAT, INT8]) == INT8}
        label = trial.user_attrs.get("label") or f"trial {trial.number}"
        kept = {g.name: g.choices[widths[g.name]] for g in self.groups}
        sparse = {n: v for n, v in sp.items() if v > 0}
        return Decision(runtime, tuple(sorted((n, k) for n, k in kept.items() if k < self.group(n).channels)),
                        tuple(sorted(q - set(sparse))), tuple(sorted(sparse.items())), label)

    def params(self, d: Decision) -> dict[str, Any]:
        """Optuna parameters that reproduce a decision (for enqueue_trial)."""
        kept = dict(d.widths)
        out: dict[str, Any] = {"runtime": d.runtime}
        for g in self.groups:
            k = kept.get(g.name, g.channels)
            out[f"w:{g.name}"] = next(f for f, c in g.choices.items() if c == k)
        for n in self.sparse_layers:
            out[f"s:{n}"] = dict(d.sparsity).get(n, 0.0)
        if "precision" in self.dimensions:
            out.update({f"p:{n}": INT8 if n in d.int8 else FLOAT for n in self.layers})
        return out

    def group(self, name: str) -> SpaceGroup:
        return next(g for g in self.groups if g.name == name)

    def seeds(self) -> list[Decision]:
        """The first generation: per runtime, the unmodified model, full INT8, and uniform widths in FP32 and INT8
        (and uniform sparsity where it applies): the front a person would try by hand."""
        out = []
        fractions = sorted({f for g in self.groups for f in g.choices}, reverse=True)
        edges = {self.layers[0], self.layers[-1]} if len(self.layers) > 2 else set()
        for rt in self.runtimes:
            out.append(self.make(rt, label=f"unmodified ({rt})"))
            if "precision" in self.dimensions:
                out.append(self.make(rt, int8=True, label=f"full INT8 ({rt})"))
                if edges:
                    out.append(self.make(rt, int8=set(self.layers) - edges,
                                         label=f"INT8, first and last layer float ({rt})"))
            for f in fractions[1:]:
                out.append(self.make(rt, f, label=f"width {f:g} ({rt})"))
                if "precision" in self.dimensions:
                    out.append(self.make(rt, f, int8=True, label=f"width {f:g}, INT8 ({rt})"))
            for s in self.sparsities[1:] if self.sparse_layers and rt == "litert" else ():
                out.append(self.make(rt, sparsity=s, label=f"sparsity {s:g} ({rt})"))
        unique: dict[str, Decision] = {}
        for d in out:
            unique.setdefault(d.key(), d)
        return list(unique.values())

    def layer_rows(self, d: Decision) -> list[dict[str, Any]]:
        """What every layer got: output channels before and after, precision, sparsity."""
        kept = dict(d.widths)
        group_of = {layer: g for g in [*self.groups, *self.fixed] for layer in g.layers}
        rows = []
        for n in self.layers:
            g = group_of.get(n)
            rows.append({"layer": n, "group": g.name if g else None,
                         "channels": g.channels if g else None,
                         "kept": (kept.get(g.name, g.channels) if g else None),
                         "precision": INT8 if n in d.int8 else FLOAT, "sparsity": dict(d.sparsity).get(n, 0.0),
                         "note": self.fixed_reasons.get(g.name, "") if g else "output channels: the model's output"})
        return rows
