"""A backend-neutral INT8 quantisation policy: one choice per quantisable layer, saved as JSON.

Layers are named by the torch module that owns the weight ("features.3.conv.1.0", "15"); the ONNX backend derives
the same names from the weight initialisers of the exported graph, so one policy applies to every backend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, SettingsError
from edgekit.fileio import write_text

FLOAT = "float"
INT8_TENSOR = "int8_tensor"
INT8_CHANNEL = "int8_channel"
MODES = (FLOAT, INT8_TENSOR, INT8_CHANNEL)
# Activation range estimation. Not every backend offers every method: each backend lists its own.
CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")
POLICY_VERSION = 1


@dataclass(frozen=True)
class Layer:
    """A quantisable layer as a backend sees it."""

    name: str  # backend-neutral: the torch module name (weight initialiser name without ".weight")
    op_type: str  # "Conv", "Gemm", "MatMul"
    params: int
    node: str = ""  # the backend's own node name (ONNX node), when it has one
    weight: str = ""  # the backend's weight tensor name


@dataclass(frozen=True)
class Policy:
    """Per-layer weight quantisation plus one activation calibration method.

    Args:
        layers: layer name -> "float" | "int8_tensor" | "int8_channel". Layers not listed stay float.
        calibration: activation calibration method (one of CALIBRATIONS).
        symmetric_activations: symmetric activation ranges (zero point fixed) instead of asymmetric.
        label: a short human name ("full INT8", "trial 12").
    """

    layers: dict[str, str] = field(default_factory=dict)
    calibration: str = "minmax"
    symmetric_activations: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.layers.items() if v not in MODES}
        if bad:
            raise SettingsError(f"policy: unknown layer modes {bad}; allowed: {list(MODES)}")
        if self.calibration not in CALIBRATIONS:
            raise SettingsError(f"policy: unknown calibration '{self.calibration}'; allowed: {list(CALIBRATIONS)}")

    @classmethod
    def uniform(cls, layers: list[Layer] | list[str], mode: str = INT8_CHANNEL, **kw: Any) -> Policy:
        names = [x.name if isinstance(x, Layer) else x for x in layers]
        return cls(layers={n: mode for n in names}, **kw)

    def mode(self, layer: str) -> str:
        return self.layers.get(layer, FLOAT)

    def quantised(self) -> list[str]:
        return [n for n, m in self.layers.items() if m != FLOAT]

    def float_layers(self) -> list[str]:
        return [n for n, m in self.layers.items() if m == FLOAT]

    def key(self) -> str:
        """Identity of what the policy produces (the label does not count)."""
        return json.dumps([sorted(self.layers.items()), self.calibration, self.symmetric_activations])

    def describe(self) -> str:
        n_q = len(self.quantised())
        per_ch = sum(m == INT8_CHANNEL for m in self.layers.values())
        sym = "symmetric" if self.symmetric_activations else "asymmetric"
        return (f"{n_q}/{len(self.layers)} layers INT8 ({per_ch} per-channel, {n_q - per_ch} per-tensor), "
                f"activations {self.calibration} {sym}")

    def to_dict(self) -> dict[str, Any]:
        return {"edgekit_policy": POLICY_VERSION, "label": self.label, "calibration": self.calibration,
                "symmetric_activations": self.symmetric_activations, "layers": dict(self.layers)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        if not isinstance(d, dict) or d.get("edgekit_policy") != POLICY_VERSION:
            raise InputError(f"not an edgekit quantisation policy (version {POLICY_VERSION})")
        return cls(layers=dict(d.get("layers") or {}), calibration=d.get("calibration", "minmax"),
                   symmetric_activations=bool(d.get("symmetric_activations", False)), label=d.get("label", ""))

    def save(self, path: str | Path) -> Path:
        return write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read policy {path}: {e}") from None
