"""CP and Tucker-2 decomposition of KxK convolutions (tensorly), as plain conv sequences any runtime can run.

    CP rank R        (Lebedev et al. 2015): 1x1 C_in->R, depthwise Kx1, depthwise 1xK, 1x1 R->C_out
                     params R * (C_in + kh + kw + C_out)
    Tucker-2 (R_in, R_out) (Kim et al. 2016): 1x1 C_in->R_in, KxK R_in->R_out, 1x1 R_out->C_out
                     params C_in*R_in + R_in*R_out*kh*kw + R_out*C_out

Every decomposed layer is an `nn.Sequential` of `nn.Conv2d`s, so export, BN folding and quantisation need nothing new.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

METHODS = ("cp", "tucker")


@dataclass(frozen=True)
class LayerPlan:
    """The decomposition chosen for one conv: its name, method and ranks (R for CP; R_in, R_out for Tucker-2)."""

    name: str
    method: str
    ranks: tuple[int, ...]
    shape: tuple[int, ...]  # the original kernel (C_out, C_in, kh, kw)
    params_before: int
    params_after: int

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayerPlan:
        return cls(d["name"], d["method"], tuple(d["ranks"]), tuple(d["shape"]), d["params_before"], d["params_after"])


def decomposable(mod: nn.Module) -> bool:
    """A dense (groups=1) Conv2d with a kernel larger than 1x1: the layers CP and Tucker-2 apply to."""
    return (isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.kernel_size != (1, 1)
            and mod.padding_mode == "zeros" and isinstance(mod.padding, tuple))


def cp_params(shape: tuple[int, ...], rank: int) -> int:
    out_c, in_c, kh, kw = shape
    return rank * (in_c + kh + kw + out_c)


def tucker_params(shape: tuple[int, ...], r_in: int, r_out: int) -> int:
    out_c, in_c, kh, kw = shape
    return in_c * r_in + r_in * r_out * kh * kw + r_out * out_c


def conv_params(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def params_after(method: str, shape: tuple[int, ...], ranks: tuple[int, ...]) -> int:
    return cp_params(shape, ranks[0]) if method == "cp" else tucker_params(shape, ranks[0], ranks[1])


def ranks_for_ratio(method: str, shape: tuple[int, ...], ratio: float) -> tuple[int, ...]:
    """The largest ranks whose parameters stay within `ratio` x the original kernel's (at least rank 1).

    Tucker-2 keeps R_in / R_out proportional to C_in / C_out (one scale factor, the positive root of a quadratic).
    """
    out_c, in_c, kh, kw = shape
    budget = ratio * conv_params(shape)
    if method == "cp":
        return (max(1, int(budget // (in_c + kh + kw + out_c))),)
    # in*(s*in) + (s*in)(s*out)*k2 + (s*out)*out = budget  ->  a s^2 + b s - budget = 0
    a = in_c * out_c * kh * kw
    b = in_c * in_c + out_c * out_c
    s = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    r_in, r_out = max(1, min(in_c, int(s * in_c))), max(1, min(out_c, int(s * out_c)))
    return r_in, r_out


def candidate_ranks(method: str, shape: tuple[int, ...], n: int = 8) -> list[tuple[int, ...]]:
    """A geometric ladder of ranks from ~2% to 100% of the original parameters (for latency budgets)."""
    out = []
    for ratio in torch.logspace(math.log10(0.02), 0, n).tolist():
        r = ranks_for_ratio(method, shape, ratio)
        if r not in out:
            out.append(r)
    return out


@torch.no_grad()
def cp_factors(weight: torch.Tensor, rank: int, n_iter: int = 50, seed: int = 0) -> list[torch.Tensor]:
    """CP factors [U_out (C_out,R), U_in (C_in,R), U_h (kh,R), U_w (kw,R)] of a 4-D kernel, weights folded into U_out."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    tl.set_backend("numpy")
    w = weight.detach().double().cpu().numpy()
    # SVD initialisation needs rank <= every mode size; past that a seeded random start is the usable choice.
    init = "svd" if rank <= min(w.shape) else "random"
    cp = parafac(w, rank, n_iter_max=n_iter, init=init, random_state=seed, normalize_factors=False)
    weights, factors = cp
    factors = [torch.from_numpy(f.copy()) for f in factors]
    factors[0] = factors[0] * torch.from_numpy(weights.copy())[None, :]
    return [f.to(weight.dtype) for f in factors]


@torch.no_grad()
def tucker2_factors(weight: torch.Tensor, r_in: int, r_out: int, n_iter: int = 20, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 over the channel modes: (core (R_out,R_in,kh,kw), U_out (C_out,R_out), U_in (C_in,R_in))."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    tl.set_backend("numpy")
    w = weight.detach().double().cpu().numpy()
    (core, factors), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1], n_iter_max=n_iter, init="svd",
                                        random_state=seed)
    u_out, u_in = factors
    return (torch.from_numpy(core.copy()).to(weight.dtype), torch.from_numpy(u_out.copy()).to(weight.dtype),
            torch.from_numpy(u_in.copy()).to(weight.dtype))


def build_cp(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """The CP layer sequence for `conv` (fresh weights; `decompose_conv` fills them)."""
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank, bias=False),
        nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank, bias=False),
        nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None),
    )


def build_tucker(conv: nn.Conv2d, r_in: int, r_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, r_in, 1, bias=False),
        nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                  bias=False),
        nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None),
    )


def build(conv: nn.Conv2d, method: str, ranks: tuple[int, ...]) -> nn.Sequential:
    seq = build_cp(conv, ranks[0]) if method == "cp" else build_tucker(conv, ranks[0], ranks[1])
    return seq.to(device=conv.weight.device, dtype=conv.weight.dtype)


@torch.no_grad()
def decompose_conv(conv: nn.Conv2d, method: str, ranks: tuple[int, ...], n_iter: int = 50, seed: int = 0
                   ) -> nn.Sequential:
    """Replaces `conv` by its CP or Tucker-2 sequence with factors fitted to its kernel."""
    seq = build(conv, method, ranks)
    w = conv.weight
    if method == "cp":
        u_out, u_in, u_h, u_w = cp_factors(w, ranks[0], n_iter, seed)
        seq[0].weight.copy_(u_in.t()[:, :, None, None])
        seq[1].weight.copy_(u_h.t()[:, None, :, None])
        seq[2].weight.copy_(u_w.t()[:, None, None, :])
        seq[3].weight.copy_(u_out[:, :, None, None])
    else:
        core, u_out, u_in = tucker2_factors(w, ranks[0], ranks[1], n_iter, seed)
        seq[0].weight.copy_(u_in.t()[:, :, None, None])
        seq[1].weight.copy_(core)
        seq[2].weight.copy_(u_out[:, :, None, None])
    if conv.bias is not None:
        seq[-1].bias.copy_(conv.bias)
    return seq


def reconstruct(seq: nn.Sequential) -> torch.Tensor:
    """The dense kernel a CP or Tucker-2 sequence computes (to check the decomposition error)."""
    if len(seq) == 4:
        u_in = seq[0].weight[:, :, 0, 0]  # (R, C_in)
        u_h = seq[1].weight[:, 0, :, 0]  # (R, kh)
        u_w = seq[2].weight[:, 0, 0, :]  # (R, kw)
        u_out = seq[3].weight[:, :, 0, 0]  # (C_out, R)
        return torch.einsum("or,ri,rh,rw->oihw", u_out, u_in, u_h, u_w)
    u_in = seq[0].weight[:, :, 0, 0]  # (R_in, C_in)
    u_out = seq[2].weight[:, :, 0, 0]  # (C_out, R_out)
    return torch.einsum("op,pqhw,qi->oihw", u_out, seq[1].weight, u_in)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def apply_plan(model: nn.Module, plan: list[LayerPlan], fit_factors: bool = True, n_iter: int = 50,
               seed: int = 0, progress=None) -> nn.Module:
    """Replaces each planned conv in place: fitted to its kernel, or (fit_factors=False) fresh structure only,
    for a priori training from scratch or for rebuilding a checkpointed model before loading its state dict."""
    task = progress.add_task("decompose", total=len(plan)) if progress is not None and fit_factors else None
    for p in plan:
        conv = model.get_submodule(p.name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{p.name} is {type(conv).__name__}, not a Conv2d")
        seq = decompose_conv(conv, p.method, p.ranks, n_iter, seed) if fit_factors else build(conv, p.method, p.ranks)
        set_module(model, p.name, seq)
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    return model
