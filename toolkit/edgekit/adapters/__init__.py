"""Low-rank and tensor methods: adapters (LoRA, LoRA-C, CP-LoRA, DoRA) that merge into plain layers, and CP /
Tucker-2 decomposition of convolutions.

    adapted = add_adapters(model, "cp-lora", rank=4, alpha=4, layers=["Conv2d"])   # freezes the base
    fit(model, x, y, params=[p for p in model.parameters() if p.requires_grad])
    save_adapter(model, "task.safetensors", meta)                                 # optional, small
    merge_adapters(model)                                                          # plain nn.Conv2d / nn.Linear again

peft provides LoRA and DoRA for Linear and Conv2d; CP-LoRA and LoRA-C for Conv2d are edgekit's (layers.py).
"""

from edgekit.adapters.inject import (
    METHODS,
    AdaptedLayer,
    adapter_param_count,
    add_adapters,
    expected_params,
    frozen_norms,
    has_adapters,
    merge_adapters,
    select_layers,
    trainable_param_count,
)
from edgekit.adapters.io import load_adapter, read_adapter, save_adapter
from edgekit.adapters.layers import CPLoRAConv2d, LoRACConv2d

__all__ = [
    "METHODS", "AdaptedLayer", "CPLoRAConv2d", "LoRACConv2d", "adapter_param_count", "add_adapters",
    "expected_params", "frozen_norms", "has_adapters", "load_adapter", "merge_adapters", "read_adapter",
    "save_adapter", "select_layers", "trainable_param_count",
]
