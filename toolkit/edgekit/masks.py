"""Pruning masks: a small validated type (0/1 tensors keyed by parameter name, shaped like the weights).

A `Mask` only ever holds 0/1 values; `check_shapes` ties it to a model, `check_within` enforces that pruning is
monotone (a weight pruned in one round stays pruned in every later round). Masks are saved as a state-dict-like
file of bool tensors (read back with weights_only=True) plus a JSON sparsity report beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError
from edgekit.fileio import atomic_path, load_state, write_json

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


class MaskError(InputError):
    """A mask is not 0/1, does not match the model's weights, or is not monotone over rounds."""


class Mask(Mapping[str, "torch.Tensor"]):
    """Per-parameter 0/1 masks, e.g. {"1.weight": bool tensor of the weight's shape}.

    Args:
        tensors: parameter name -> tensor holding only 0 and 1 (any dtype); stored as bool on the CPU.
    """

    def __init__(self, tensors: Mapping[str, Any]):
        import torch

        self._masks: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise MaskError(f"mask '{name}' is a {type(t).__name__}, not a tensor")
            t = t.detach().cpu()
            if t.dtype != torch.bool:
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise MaskError(f"mask '{name}' holds non-finite values; masks are 0/1")
                if not bool(((t == 0) | (t == 1)).all()):
                    raise MaskError(f"mask '{name}' holds values other than 0 and 1")
                t = t != 0
            self._masks[name] = t.clone()

    # Mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or set(self) != set(other):
            return False
        import torch

        return all(torch.equal(self[n], other[n]) for n in self)

    __hash__ = None  # type: ignore[assignment]  # mutable contents: not hashable

    @classmethod
    def ones(cls, model: nn.Module, names: Iterable[str]) -> Mask:
        """An all-ones (nothing pruned) mask for the named parameters of `model`."""
        import torch

        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise MaskError(f"the model has no parameters {missing}")
        return cls({n: torch.ones_like(params[n], dtype=torch.bool, device="cpu") for n in names})

    def check_shapes(self, model: nn.Module) -> None:
        """Raises MaskError unless every mask names a parameter of `model` with the same shape."""
        params = dict(model.named_parameters())
        for name, m in self._masks.items():
            if name not in params:
                raise MaskError(f"mask '{name}' names no parameter of the model")
            if tuple(m.shape) != tuple(params[name].shape):
                raise MaskError(f"mask '{name}' has shape {list(m.shape)} but the weight has "
                                f"{list(params[name].shape)}")

    def check_within(self, previous: Mask) -> None:
        """Raises MaskError unless this mask keeps only weights that `previous` kept (pruning is monotone)."""
        if set(self) != set(previous):
            raise MaskError(f"masks cover different layers: {sorted(set(self) ^ set(previous))}")
        for name, m in self._masks.items():
            if m.shape != previous[name].shape:
                raise MaskError(f"mask '{name}' changed shape between rounds")
            revived = int((m & ~previous[name]).sum())
            if revived:
                raise MaskError(f"mask '{name}' revives {revived} weights pruned in an earlier round")

    def apply(self, model: nn.Module) -> None:
        """Zeroes the pruned weights of `model` in place."""
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, m in self._masks.items():
                p = params[name]
                p.mul_(m.to(device=p.device, dtype=p.dtype))

    def total(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def nonzero(self) -> int:
        return sum(int(m.sum()) for m in self._masks.values())

    def remaining(self) -> float:
        """Fraction of the masked weights that are kept (1.0 for an empty mask)."""
        total = self.total()
        return self.nonzero() / total if total else 1.0

    def random_like(self, seed: int) -> Mask:
        """A random mask with the same number of kept weights in every layer (the paper's random-mask control)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        out = {}
        for name, m in self._masks.items():
            keep = int(m.sum())
            flat = torch.zeros(m.numel(), dtype=torch.bool)
            flat[torch.randperm(m.numel(), generator=gen)[:keep]] = True
            out[name] = flat.reshape(m.shape)
        return Mask(out)

    def sparsity_report(self) -> dict[str, Any]:
        """{"total", "nonzero", "remaining", "sparsity", "layers": {name: {shape, total, nonzero, sparsity}}}."""
        layers = {}
        for name, m in self._masks.items():
            total, kept = m.numel(), int(m.sum())
            layers[name] = {"shape": list(m.shape), "total": total, "nonzero": kept,
                            "sparsity": round(1 - kept / total, 6) if total else 0.0}
        total, kept = self.total(), self.nonzero()
        return {"total": total, "nonzero": kept, "remaining": round(kept / total, 6) if total else 1.0,
                "sparsity": round(1 - kept / total, 6) if total else 0.0, "layers": layers}

    def state(self) -> dict[str, torch.Tensor]:
        """The bool tensors, for embedding in a checkpoint."""
        return {n: m.clone() for n, m in self._masks.items()}

    def save(self, path: str | Path) -> Path:
        """Writes the mask to `path` (.pt, bool tensors) and its sparsity report to `path` with suffix .json."""
        import torch

        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)
        write_json(path.with_suffix(".json"), self.sparsity_report())
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Mask:
        """Reads a mask written by `save` (weights_only=True); checks its shapes against `model` when given."""

        path = Path(path)
        state = load_state(path, "mask file", MaskError)
        mask = cls(state)
        if model is not None:
            mask.check_shapes(model)
        return mask
