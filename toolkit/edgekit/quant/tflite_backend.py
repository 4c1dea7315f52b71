"""TFLite backend: applies a Policy with litert-torch's PT2E quantizer (static INT8), one config per layer.

litert-torch's own module-name filter expects nn_module_stack keys of an older torch.export; this backend matches
layers by the qualified module names stored in the stack's values instead. Float layers get no annotation; ops that
belong to no policy layer (add, pooling, ...) follow the policy's most common INT8 mode.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, first_line
from edgekit.fileio import atomic_path
from edgekit.quant.policy import FLOAT, INT8_CHANNEL, Layer, Policy

NAME = "litert-pt2e"
FORMAT = "tflite"
RUNTIME = "litert"
# minmax: MinMaxObserver; mse: HistogramObserver (searches the range that minimises the L2 quantisation error).
CALIBRATIONS = ("mse", "minmax")


def list_layers(model: Any) -> list[Layer]:
    """Conv / Linear modules of a torch model, in definition order, named by their qualified names."""
    import torch.nn as nn

    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            out.append(Layer(name=name, op_type="Gemm" if isinstance(mod, nn.Linear) else "Conv",
                             params=int(mod.weight.numel()), node=name, weight=f"{name}.weight"))
    return out


def _config(mode: str, calibration: str, symmetric: bool) -> Any:
    import dataclasses

    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    cfg = pq.get_symmetric_quantization_config(is_per_channel=mode == INT8_CHANNEL)
    observer = MinMaxObserver if calibration == "minmax" else HistogramObserver
    act = dataclasses.replace(cfg.input_activation,
                              qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
                              observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
    return dataclasses.replace(cfg, input_activation=act, output_activation=act)


def _owned_by(names: set[str]) -> Any:
    def owned(n: Any) -> bool:
        stack = n.meta.get("nn_module_stack")
        if not stack and n.op in ("get_attr", "placeholder"):
            # Weights carry no module stack: they belong to the layer that uses them.
            return any(owned(u) for u in n.users if u.op == "call_function")
        return any(v[0] in names for v in (stack or {}).values())

    return owned


def _policy_quantizer(policy: Policy) -> Any:
    from litert_torch.quantize import pt2e_quantizer as pq

    class PolicyQuantizer(pq.PT2EQuantizer):
        """PT2EQuantizer with per-layer configs keyed by qualified module name (None = keep float)."""

        def __init__(self, layer_configs: dict[str, Any], global_config: Any) -> None:
            super().__init__()
            self.layer_configs = layer_configs
            self.global_config = global_config

        def _annotate_for_static_quantization_config(self, model: Any) -> Any:
            for name, cfg in self.layer_configs.items():
                if cfg is not None:
                    self._annotate_all_static_patterns(model, cfg, _owned_by({name}))
            others = _owned_by(set(self.layer_configs))
            self._annotate_all_static_patterns(model, self.global_config, lambda n: not others(n))
            return model

    modes = [m for m in policy.layers.values() if m != FLOAT]
    common = collections.Counter(modes).most_common(1)[0][0] if modes else None
    configs = {name: (None if m == FLOAT else _config(m, policy.calibration, policy.symmetric_activations))
               for name, m in policy.layers.items()}
    glob = _config(common, policy.calibration, policy.symmetric_activations) if common else None
    return PolicyQuantizer(configs, glob)


class TorchPolicyQuantizer:
    """What the PT2E backends share (LiteRT here, ExecuTorch in executorch_backend): one torch model quantised under
    many policies, each checked against the backend's calibrations and the model's layers first.

    Args:
        model: the float torch model (eval mode).
        example: one input batch (fixes the artifact's shape).
        calib_x: calibration inputs (N, C, H, W), from the training split.
    """

    APPLY_IN_CHILD = True  # apply keeps nothing on self: it runs in a child process (edgekit.quant.evaluate)

    LABEL = ""
    CALIBRATIONS: tuple[str, ...] = ()

    def __init__(self, model: Any, example: np.ndarray, calib_x: np.ndarray, workdir: str | Path | None = None
                 ) -> None:
        self.model = model.eval()
        self.example = np.ascontiguousarray(example, np.float32)
        self.calib_x = calib_x.astype(np.float32)
        self.layers: list[Layer] = list_layers(model)

    def _check(self, policy: Policy) -> None:
        if policy.calibration not in self.CALIBRATIONS:
            raise EdgekitError(f"{self.LABEL} backend: calibration '{policy.calibration}' is not offered by the PT2E "
                               f"quantizer here; use one of {list(self.CALIBRATIONS)}")
        unknown = sorted(set(policy.layers) - {la.name for la in self.layers})
        if unknown:
            raise EdgekitError(f"policy names layers the model lacks: {unknown[:5]}")


class TFLiteQuantizer(TorchPolicyQuantizer):
    """Quantises one torch model to TFLite under many policies (litert-torch's PT2E quantizer)."""

    LABEL = "TFLite"
    CALIBRATIONS = CALIBRATIONS

    def apply(self, policy: Policy, out_path: str | Path) -> Path:
        import litert_torch
        import torch
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        from edgekit.export import tflite as tflite_export

        self._check(policy)
        x = torch.as_tensor(self.example)
        batch = x.shape[0]
        quantizer = _policy_quantizer(policy)
        with tflite_export._quiet_native():
            try:
                m = torch.export.export(self.model, (x,)).module()
                m = quantize_pt2e.prepare_pt2e(m, quantizer)
                with torch.no_grad():
                    for i in range(0, len(self.calib_x) - len(self.calib_x) % batch, batch):
                        m(torch.as_tensor(self.calib_x[i:i + batch]))
                m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
            except Exception as e:
                raise EdgekitError(f"PT2E quantisation failed: {first_line(e)}") from None
            # Not export/tflite.export: it calls .eval(), which a converted PT2E GraphModule refuses.
            with atomic_path(Path(out_path)) as tmp:
                try:
                    litert_torch.convert(m, (x,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(tmp))
                except Exception as e:
                    raise EdgekitError(f"TFLite INT8 export failed: {first_line(e)}") from None
        return Path(out_path)
