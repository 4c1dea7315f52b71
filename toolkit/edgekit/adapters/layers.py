"""Conv adapters that peft lacks: CP-LoRA (rank-R CP update of the 4-D kernel) and LoRA-C (layer-wise ConvLoRA).

Both wrap a frozen `nn.Conv2d` as `base_layer` (the attribute name peft uses too, so merging and the adapter file
treat every adapter alike) and name their trainable tensors `lora_*`. The update is formed as a dense kernel delta
and added to the frozen kernel, so any stride, padding, dilation or grouping of the base layer is kept exactly, and
merging is one addition.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _ConvAdapter(nn.Module):
    """Common part: the frozen base conv, scaling, optional input dropout, merge."""

    method = ""

    def __init__(self, base_layer: nn.Conv2d, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        for p in base_layer.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """The kernel update (already scaled), shaped like the base kernel."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        delta = self.delta_weight()
        if self.dropout is None or not self.training:
            # One convolution with the summed kernel: equal to base(x) + delta-conv(x) by linearity.
            return base._conv_forward(x, base.weight + delta, base.bias)
        # Dropout acts on the adapter's input only, as in LoRA; that needs a second convolution.
        return base(x) + base._conv_forward(self.dropout(x), delta, None)

    @torch.no_grad()
    def merged_layer(self) -> nn.Conv2d:
        """The base conv with the update folded into its kernel (a plain nn.Conv2d)."""
        base = self.base_layer
        base.weight.add_(self.delta_weight().to(base.weight.dtype))
        return base

    def adapter_numel(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if n.startswith("lora_"))


class CPLoRAConv2d(_ConvAdapter):
    """CP-LoRA: dW[o, i, h, w] = (alpha / R) * sum_r U_out[o, r] U_in[i, r] U_h[h, r] U_w[w, r].

    Parameters: R * (C_out + C_in/groups + kh + kw), where a spatial mode of size 1 has no factor (it would be one
    redundant scale per component), so a 1x1 conv costs R * (C_out + C_in), the same as LoRA. U_out starts at zero
    so the adapted model starts equal to the base (the other factors get gradients once U_out moves, as LoRA's B
    and A do).
    """

    method = "cp-lora"

    def __init__(self, base_layer: nn.Conv2d, rank: int, alpha: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__(base_layer, rank, alpha, dropout)
        out_c, in_c, kh, kw = base_layer.weight.shape
        w = base_layer.weight
        self.kernel = (kh, kw)
        self.lora_out = nn.Parameter(w.new_zeros(out_c, rank))
        # Factors whose product has roughly kaiming scale over the fan-in (in_c * kh * kw).
        n_factors = 1 + (kh > 1) + (kw > 1)
        std = (1.0 / (in_c * kh * kw)) ** (1.0 / (2 * n_factors))

        def factor(n: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(n, rank, dtype=w.dtype, device=w.device) * std)

        self.lora_in = factor(in_c)
        self.lora_h = factor(kh) if kh > 1 else None
        self.lora_w = factor(kw) if kw > 1 else None

    def delta_weight(self) -> torch.Tensor:
        kh, kw = self.kernel
        ones = self.lora_out.new_ones(1, self.rank)
        u_h = self.lora_h if self.lora_h is not None else ones
        u_w = self.lora_w if self.lora_w is not None else ones
        return torch.einsum("or,ir,hr,wr->oihw", self.lora_out, self.lora_in, u_h, u_w) * self.scaling

    @staticmethod
    def expected_params(out_c: int, in_c_per_group: int, kh: int, kw: int, rank: int) -> int:
        return rank * (out_c + in_c_per_group + (kh if kh > 1 else 0) + (kw if kw > 1 else 0))


class LoRACConv2d(_ConvAdapter):
    """LoRA-C (layer-wise ConvLoRA, as in the LoRA-C paper's code, which uses loralib's ConvLoRA).

    The kernel update is one low-rank matrix over the whole layer: dW = (alpha / r) * view(B @ A, kernel shape),
    B: (C_out * kh, r * kh), A: (r * kh, C_in/groups * kw). Parameters: r * kh * (C_out * kh + C_in/groups * kw)
    (= r * k^2 * (C_out + C_in) for a square kernel). B starts at zero, A as a Linear layer's weight.
    """

    method = "lora-c"

    def __init__(self, base_layer: nn.Conv2d, rank: int, alpha: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__(base_layer, rank, alpha, dropout)
        out_c, in_c, kh, kw = base_layer.weight.shape
        w = base_layer.weight
        self.lora_A = nn.Parameter(w.new_empty(rank * kh, in_c * kw))
        self.lora_B = nn.Parameter(w.new_zeros(out_c * kh, rank * kh))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).view(self.base_layer.weight.shape) * self.scaling

    @staticmethod
    def expected_params(out_c: int, in_c_per_group: int, kh: int, kw: int, rank: int) -> int:
        return rank * kh * (out_c * kh + in_c_per_group * kw)


CONV_ADAPTERS: dict[str, type[_ConvAdapter]] = {"cp-lora": CPLoRAConv2d, "lora-c": LoRACConv2d}


def conv_delta_via_conv(adapter: _ConvAdapter, x: torch.Tensor) -> torch.Tensor:
    """The adapter path alone (for tests): conv of x with the delta kernel and the base layer's geometry."""
    return F.conv2d(x, adapter.delta_weight(), None, adapter.base_layer.stride, adapter.base_layer.padding,
                    adapter.base_layer.dilation, adapter.base_layer.groups)
