"""ExecuTorch backend: applies a Policy with executorch's XNNPACKQuantizer (PT2E static INT8), one config per layer,
and lowers to XNNPACK (`.pte`, timed in the ExecuTorch runtime).

Layer configs are keyed by module name, like the quantizer's own `set_module_name`, but matched differently:
`set_module_name`'s filter needs every node of a fused pattern inside the named module, so a convolution whose
activation is a sibling module (torchvision's Conv2dNormActivation: conv at `.0`, ReLU6 at `.2`) or a functional
call is never annotated and silently stays float. Here a pattern belongs to the policy layer that owns its
convolution / linear node; nodes owned by no policy layer (activations, weights) join whichever layer's pattern
claims them. Operators of no layer (add, pooling) get the policy's most common INT8 mode, annotated first; float
layers get no annotation at all.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.quant.policy import FLOAT, INT8_CHANNEL, Policy
from edgekit.quant.tflite_backend import TorchPolicyQuantizer, list_layers

NAME = "xnnpack-pt2e"
FORMAT = "pte"
RUNTIME = "executorch"
# minmax: MinMaxObserver; mse: HistogramObserver (the XNNPACK quantizer's default; searches the range that
# minimises the L2 quantisation error).
CALIBRATIONS = ("mse", "minmax")
PROBE_INPUTS = 8

__all__ = ["ExecuTorchQuantizer", "policy_quantizer", "list_layers"]


def layer_config(mode: str, calibration: str, symmetric: bool) -> Any:
    """The XNNPACK quantizer's config for one INT8 mode, with the policy's activation calibration."""
    import torch

    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    cfg = get_symmetric_quantization_config(is_per_channel=mode == INT8_CHANNEL)
    observer = MinMaxObserver if calibration == "minmax" else HistogramObserver
    act = dataclasses.replace(cfg.input_activation,
                              qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
                              observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
    return dataclasses.replace(cfg, input_activation=act, output_activation=act)


def _owner(layers: set[str]) -> Any:
    """node -> the policy layer whose module the node runs in (None: no policy layer)."""

    def owner(node: Any) -> str | None:
        stack = node.meta.get("nn_module_stack") or {}
        return next((path for path, _ in reversed(list(stack.values())) if path in layers), None)

    return owner


def policy_quantizer(policy: Policy) -> Any:
    """XNNPACKQuantizer configured per layer from `policy` (see the module docstring for the matching)."""
    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    groups: dict[str, set[str]] = collections.defaultdict(set)  # INT8 mode -> its layers
    for name, mode in policy.layers.items():
        if mode != FLOAT:
            groups[mode].add(name)

    class PolicyQuantizer(XNNPACKQuantizer):
        # Every annotation pass builds each pattern's graph with torch.export (~0.5 s each): the QAT-only
        # conv-BN patterns cannot match here (prepare_pt2e folds BatchNorm first), and layers that share a mode
        # are annotated in one pass, so a policy costs at most three passes, not one per layer.
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if not p.is_qat]

        def _annotate_for_quantization_config(self, model: Any) -> Any:
            owner = _owner(set(policy.layers))
            # Patterns of no layer first, so a layer's pass cannot claim an add or a pooling for its own config.
            self._annotate_all_patterns(model, self.global_config, lambda n: owner(n) is None)
            for mode, names in groups.items():
                cfg = layer_config(mode, policy.calibration, policy.symmetric_activations)
                self._annotate_all_patterns(model, cfg, lambda n, names=names: owner(n) in names or owner(n) is None)
            return model

    q = PolicyQuantizer()
    if groups:
        common = max(groups, key=lambda m: len(groups[m]))
        q.set_global(layer_config(common, policy.calibration, policy.symmetric_activations))
    return q


class ExecuTorchQuantizer(TorchPolicyQuantizer):
    """Quantises one torch model to ExecuTorch programs under many policies (XNNPACKQuantizer, XNNPACK delegate)."""

    LABEL = "ExecuTorch"
    CALIBRATIONS = CALIBRATIONS

    def apply(self, policy: Policy, out_path: str | Path) -> Path:
        """Writes the policy's `.pte` and its sidecar."""
        from edgekit.export import pte

        self._check(policy)
        precision = "mixed" if policy.float_layers() else "int8"
        return pte.export(self.model, self.example, Path(out_path), calibration=self.calib_x,
                          quantizer=policy_quantizer(policy), precision=precision)

    def check_layers(self, policy: Policy, artifact: Path, probe_inputs: np.ndarray) -> dict[str, Any]:
        """Per-layer accuracy of the policy's `.pte` in the ExecuTorch runtime (into its sidecar)."""
        from edgekit.export import pte

        return pte.check_layers(self.model, self.example, artifact, probe_inputs, calibration=self.calib_x,
                                quantizer=policy_quantizer(policy))


def search(job: Any, float_pte: Path) -> Any:
    """The ExecuTorch part of the INT8 search (a quant.run.QuantJob): a search timed in ExecuTorch (`pte_trials` >
    0, or no ONNX search to take a policy from), else the ONNX search's policy applied here; the kept candidates get
    the per-layer check."""
    from edgekit.quant.driver import search_runtime, transfer_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.sensitivity import ranking

    settings, onnx_result = job.settings, job.onnx_result
    backend = ExecuTorchQuantizer(job.model, job.example, job.calib)
    scorer = Scorer(backend, RUNTIME, float_pte, job.x_eval, job.y_eval, job.workdir / "pte", suffix=".pte",
                    **job.common)
    kw = {"fmt": FORMAT, "backend_name": NAME, "calibrations": CALIBRATIONS, "constraints": job.constraints,
          "final_runs": settings.final_runs}
    if settings.pte_trials or onnx_result is None:
        ranked = ranking(onnx_result.sensitivity) if onnx_result else None
        result = search_runtime(scorer, trials=max(settings.pte_trials, 1), seed=settings.seed,
                                max_seconds=settings.max_seconds, latency_slack=settings.latency_slack,
                                ranked=ranked, progress=job.progress, **kw)
    else:
        result = transfer_runtime(scorer, onnx_result.chosen.policy, source="onnxruntime", **kw)
    probe = job.probe[:PROBE_INPUTS].astype(np.float32)
    for cand in {id(c): c for c in (result.int8, result.chosen)}.values():
        backend.check_layers(cand.policy, cand.path, probe)
    return result
