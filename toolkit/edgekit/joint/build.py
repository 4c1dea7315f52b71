"""Builds a decision: the pruned (and, for quality, fine-tuned) torch model, then the artifact for its runtime.

Channel pruning goes through edgekit.prune.channels (Torch-Pruning), unstructured sparsity through a magnitude mask
held during fine-tuning, precision through the real quantisation toolchains of edgekit.quant (ONNX Runtime's
quantize_static for ONNX, litert-torch's PT2E quantizer for TFLite; per-channel INT8 weights on the chosen layers).
Fine-tuned models are cached per architecture: decisions that differ only in precision or runtime share one.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.joint.space import Decision

if TYPE_CHECKING:
    import torch.nn as nn

SUFFIX = {"onnxruntime": ".onnx", "litert": ".tflite"}


@dataclass
class TrainData:
    """Training inputs for fine-tuning and INT8 calibration (labels: the task's, or the unmodified model's top-1)."""

    x: np.ndarray
    y: np.ndarray
    labelled: bool


def magnitude_mask(model: nn.Module, sparsity: dict[str, float]) -> Any:
    """A Mask zeroing the smallest `sparsity[layer]` fraction of each named layer's weights."""
    import torch

    from edgekit.masks import Mask

    params = dict(model.named_parameters())
    out = {}
    for layer, frac in sparsity.items():
        w = params[f"{layer}.weight"].detach().abs().flatten()
        k = int(round(frac * w.numel()))
        keep = torch.ones(w.numel(), dtype=torch.bool)
        if k:
            keep[torch.argsort(w, stable=True)[:k]] = False
        out[f"{layer}.weight"] = keep.reshape(params[f"{layer}.weight"].shape)
    return Mask(out)


class Builder:
    """Makes models and artifacts for decisions.

    Args:
        model: the unmodified, trained torch model (never changed).
        example: one input batch (N=1) that fixes the artifacts' shape.
        train: fine-tuning and calibration data.
        settings: the joint Settings (fine-tuning and calibration fields).
        workdir: where artifacts are written.
    """

    def __init__(self, model: nn.Module, example: np.ndarray, train: TrainData, settings: Any, workdir: Path,
                 progress: Any = None, cache_size: int = 6) -> None:
        self.base = copy.deepcopy(model).cpu().eval()
        self.example = np.ascontiguousarray(example, np.float32)
        self.train, self.s, self.workdir, self.progress = train, settings, Path(workdir), progress
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.calib = train.x[: settings.calibration_inputs].astype(np.float32)
        self._tuned: OrderedDict[str, nn.Module] = OrderedDict()
        self._cache_size = cache_size
        from edgekit.train import outputs_are_probabilities

        self.probabilities = outputs_are_probabilities(self.base, train.x)
        self._teacher: np.ndarray | None = None
        self.histories: dict[str, list[list[Any]]] = {}
        self.finetunes = 0

    def structural(self, d: Decision) -> nn.Module:
        """The decision's architecture with the unmodified model's surviving weights (not fine-tuned)."""
        import torch

        from edgekit.prune.channels import prune_to_counts

        model = copy.deepcopy(self.base)
        history = prune_to_counts(model, torch.as_tensor(self.example), dict(d.widths)) if d.widths else []
        self.histories[d.width_key()] = history
        if d.sparsity:
            magnitude_mask(model, dict(d.sparsity)).apply(model)
        return model.eval()

    def is_cached(self, d: Decision) -> bool:
        return d.width_key() in self._tuned or not (d.widths or d.sparsity)

    def tuned(self, d: Decision, epochs: int | None = None) -> nn.Module:
        """The decision's model fine-tuned for `epochs` (default: candidate_epochs()); cached per architecture.
        The unmodified architecture is returned as it is (it was trained already)."""
        key = d.width_key()
        default = self.candidate_epochs()
        epochs = default if epochs is None else epochs
        if not d.widths and not d.sparsity:
            return self.base
        if epochs == default and key in self._tuned:
            self._tuned.move_to_end(key)
            return self._tuned[key]
        model = self.structural(d)
        self.finetune(model, dict(d.sparsity), epochs, f"fine-tune {d.label or 'candidate'}")
        if epochs == default:
            self._tuned[key] = model
            while len(self._tuned) > self._cache_size:
                self._tuned.popitem(last=False)
        return model

    def train_inputs(self) -> int:
        return min(self.s.train_inputs or len(self.train.x), len(self.train.x))  # a cap, not a count to reach

    def candidate_epochs(self) -> int:
        """Fine-tuning epochs of a pruned candidate: finetune_epochs, or more where that many epochs of this data
        make fewer than finetune_steps optimiser steps (a thinner model needs steps to recover, not passes)."""
        per_epoch = -(-self.train_inputs() // self.s.batch_size)
        return max(self.s.finetune_epochs, -(-self.s.finetune_steps // per_epoch))

    def finetune(self, model: nn.Module, sparsity: dict[str, float], epochs: int, what: str) -> None:
        import torch

        from edgekit.train import fit

        if epochs <= 0:
            return
        mask = magnitude_mask(model, sparsity) if sparsity else None
        params = dict(model.named_parameters())
        pairs = [(params[n], m) for n, m in mask.items()] if mask is not None else []

        def keep_zeros(m: nn.Module, step: int) -> None:
            with torch.no_grad():
                for p, keep in pairs:
                    p.mul_(keep.to(p.device, p.dtype))

        n = self.train_inputs()
        fit(model, self.train.x[:n], self.train.y[:n], epochs=epochs, lr=self.s.lr, batch_size=self.s.batch_size,
            seed=self.s.seed, device="cpu", after_step=keep_zeros if pairs else None, progress=self.progress,
            description=what, probabilities=self.probabilities, teacher=self.teacher(n),
            teacher_weight=self.s.distill)
        model.eval()
        self.finetunes += 1

    def teacher(self, n: int) -> np.ndarray | None:
        """The unmodified model's class probabilities on the first n training inputs (computed once), for
        distillation; None when `distill` is 0."""
        if not self.s.distill:
            return None
        if self._teacher is None or len(self._teacher) < n:
            from edgekit.train import predict

            out = predict(self.base, self.train.x[:n]).reshape(n, -1).astype(np.float64)
            if not self.probabilities:
                out = np.exp(out - out.max(1, keepdims=True))
                out /= out.sum(1, keepdims=True)
            self._teacher = out.astype(np.float32)
        return self._teacher[:n]

    def artifact(self, model: nn.Module, d: Decision, name: str) -> Path:
        """Writes the decision's artifact for its runtime (float export, sparse storage or INT8 policy)."""
        path = self.workdir / f"{name}{SUFFIX[d.runtime]}"
        if d.runtime == "onnxruntime":
            return self._onnx(model, d, path)
        return self._tflite(model, d, path)

    def _onnx(self, model: nn.Module, d: Decision, path: Path) -> Path:
        from edgekit.export import onnx as onnx_export
        from edgekit.quant.onnx_backend import OnnxQuantizer
        from edgekit.quant.policy import INT8_CHANNEL, Policy

        if not d.int8:
            return onnx_export.export(model, self.example, path)
        float_path = onnx_export.export(model, self.example, path.with_name(path.stem + "-float.onnx"))
        q = OnnxQuantizer(float_path, self.calib, self.workdir / "calib")
        names = {la.name for la in q.layers}
        missing = sorted(set(d.int8) - names)
        if missing:
            raise EdgekitError(f"joint: layers {missing[:5]} have no weight initialiser of that name in the ONNX "
                               "export; the policy cannot name them")
        policy = Policy(layers={n: INT8_CHANNEL for n in d.int8}, calibration="minmax", label=d.label)
        out = q.apply(policy, path)
        float_path.unlink(missing_ok=True)
        return out

    def _tflite(self, model: nn.Module, d: Decision, path: Path) -> Path:
        from edgekit.export import tflite as tflite_export
        from edgekit.export import tflite_sparse
        from edgekit.quant.policy import FLOAT, INT8_CHANNEL, Policy
        from edgekit.quant.tflite_backend import TFLiteQuantizer

        if d.int8:
            q = TFLiteQuantizer(model, self.example, self.calib)
            layers = {la.name: (INT8_CHANNEL if la.name in d.int8 else FLOAT) for la in q.layers}
            return q.apply(Policy(layers=layers, calibration="minmax", label=d.label), path)
        if d.sparsity:
            return tflite_sparse.export(model, self.example, path)
        return tflite_export.export(model, self.example, path)
