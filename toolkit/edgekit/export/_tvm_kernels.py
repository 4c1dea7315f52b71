"""Relax rewrites that hand convolutions to edgekit's own kernels (kernels/) through `call_dps_packed`.

Patterns (bias and activation fused when present; BatchNorm is folded into the convolution beforehand):
- 1x1 convolution (groups 1, stride 1, no padding) whose weight has at least `sparse_min_zeros` zeros
  -> `edgekit_spmm` with CSR constants (row_ptr, col_idx, values);
- depthwise 3x3 (padding 1, stride 1 or 2) -> `edgekit_dw3x3`;
- dense 3x3 with at most `stem_max_cin` input channels (padding 1, stride 1 or 2; a CNN's stem) -> `edgekit_conv3x3`;
- a fully connected layer on one vector (matmul by a constant, plus a constant bias) -> `edgekit_dense`.
Everything else stays a Relax op and is compiled (and tuned) by TVM.

Which 1x1 layers are "sparse-worthy" is decided here, by zero fraction alone: `edgekit.rules.prunable_layers`
answers for XNNPACK's rules (and is empty on an AVX x86 host, exactly where these kernels are needed), so it does not
apply to kernels that run sparse on every CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ACT_CODES = {None: 0, "relu": 1, "relu6": 2}


@dataclass(frozen=True)
class KernelPolicy:
    sparse_min_zeros: float = 0.5  # 1x1 convs with fewer zeros stay dense (TVM)
    depthwise: bool = True
    stem: bool = True
    stem_max_cin: int = 4
    dense: bool = True


@dataclass
class Replaced:
    """What the rewrite did, per kernel, for the export record."""

    layers: list[dict[str, Any]] = field(default_factory=list)

    def count(self, kernel: str) -> int:
        return sum(1 for layer in self.layers if layer["kernel"] == kernel)


def fold_batchnorm(model: Any) -> Any:
    """A copy of `model` with every Conv2d directly followed by a BatchNorm2d (in a Sequential) fused into one conv."""
    import copy

    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    return model


def rewrite(mod: Any, policy: KernelPolicy) -> tuple[Any, Replaced]:
    """Rewrites `mod["main"]` (after FoldConstant) so eligible convolutions call the kernels."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    done = Replaced()
    w_p, b_p = is_const(), is_const()
    conv_p = is_op("relax.nn.conv2d")(wildcard(), w_p)
    add_p = is_op("relax.add")(conv_p, b_p)
    clip_p = is_op("relax.clip")(add_p, wildcard(), wildcard())
    relu_p = is_op("relax.nn.relu")(add_p)

    def make(with_bias: bool, act_p: Any, act: str | None):
        def rewriter(orig: Any, m: dict) -> Any:
            conv = m[conv_p]
            if act == "relu6":
                lo, hi = (float(m[act_p].args[i].value) for i in (1, 2))
                if (lo, hi) != (0.0, 6.0):
                    return orig
            bias = m[b_p].value.numpy() if with_bias else None
            call = _kernel_call(relax, conv, m[w_p].value.numpy(), bias, act, orig.ty, policy, done)
            return orig if call is None else call

        return rewriter

    def dense_rewriter(orig: Any, m: dict) -> Any:
        call = _dense_call(
            relax, m[mm_p], m[mw_p].value.numpy(), m[mb_p].value.numpy(), orig.ty, policy, done
        )
        return orig if call is None else call

    mw_p, mb_p = is_const(), is_const()
    mm_p = is_op("relax.matmul")(wildcard(), mw_p)
    func = mod["main"]
    for dense_p in (is_op("relax.add")(mm_p, mb_p), is_op("relax.add")(mb_p, mm_p)):
        func = rewrite_call(dense_p, dense_rewriter, func)
    for pattern, with_bias, act_p, act in (
        (clip_p, True, clip_p, "relu6"),
        (relu_p, True, None, "relu"),
        (add_p, True, None, None),
        (conv_p, False, None, None),
    ):
        func = rewrite_call(pattern, make(with_bias, act_p, act), func)
    mod["main"] = func
    return mod, done


def _dense_call(
    relax: Any, mm: Any, wt: np.ndarray, bias: np.ndarray, out_ty: Any, policy: KernelPolicy, done: Replaced
) -> Any:
    """matmul(x[1, K], W[K, N]) + bias[N] -> edgekit_dense with W stored [N, K] (rows stream contiguously)."""
    shape = [int(d) for d in mm.args[0].ty.shape]
    if not policy.dense or len(shape) != 2 or shape[0] != 1 or wt.ndim != 2 or wt.shape[0] != shape[1]:
        return None
    if str(wt.dtype) != "float32" or bias.size != wt.shape[1]:
        return None
    done.layers.append({"kernel": "dense", "shape": [int(wt.shape[1]), int(wt.shape[0])], "act": "none"})
    args = [
        mm.args[0],
        relax.const(np.ascontiguousarray(wt.T)),
        relax.const(bias.reshape(-1).astype(np.float32)),
        relax.prim_value(0),
    ]
    return relax.op.call_dps_packed("edgekit_dense", args, out_ty)


def _kernel_call(
    relax: Any,
    conv: Any,
    wt: np.ndarray,
    bias: np.ndarray | None,
    act: str | None,
    out_ty: Any,
    policy: KernelPolicy,
    done: Replaced,
) -> Any:
    attrs = conv.attrs
    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or wt.ndim != 4:
        return None
    shape = [int(d) for d in conv.args[0].ty.shape]
    if len(shape) != 4 or shape[0] != 1 or str(wt.dtype) != "float32":
        return None
    co, cig, kh, kw = wt.shape
    cin = shape[1]
    if bias is not None:
        if bias.size != co or bias.shape not in ((co,), (1, co, 1, 1), (co, 1, 1)):
            return None
        bias = bias.reshape(co).astype(np.float32)
    else:
        bias = np.zeros(co, np.float32)
    strides = [int(s) for s in attrs.strides]
    pad = [int(p) for p in attrs.padding]
    dil = [int(d) for d in attrs.dilation]
    groups = int(attrs.groups)
    if dil != [1, 1]:
        return None
    act_code = relax.prim_value(ACT_CODES[act])
    info = {"shape": [int(s) for s in wt.shape], "act": act or "none"}
    if groups == 1 and kh == kw == 1 and strides == [1, 1] and pad == [0, 0, 0, 0]:
        zeros = 1.0 - np.count_nonzero(wt) / wt.size
        if zeros < policy.sparse_min_zeros:
            return None
        from edgekit.kernels import csr

        row_ptr, col_idx, values = csr(wt.reshape(co, cin))
        done.layers.append({"kernel": "spmm", **info, "zero_fraction": round(float(zeros), 4)})
        args = [
            conv.args[0],
            relax.const(row_ptr),
            relax.const(col_idx),
            relax.const(values),
            relax.const(bias),
            act_code,
        ]
        return relax.op.call_dps_packed("edgekit_spmm", args, out_ty)
    if kh == kw == 3 and pad == [1, 1, 1, 1] and strides[0] == strides[1] and strides[0] in (1, 2):
        stride = relax.prim_value(strides[0])
        if policy.depthwise and groups == cin == co and cig == 1:
            done.layers.append({"kernel": "dw3x3", **info, "stride": strides[0]})
            args = [conv.args[0], relax.const(np.ascontiguousarray(wt)), relax.const(bias), stride, act_code]
            return relax.op.call_dps_packed("edgekit_dw3x3", args, out_ty)
        if policy.stem and groups == 1 and cin <= policy.stem_max_cin:
            done.layers.append({"kernel": "conv3x3", **info, "stride": strides[0]})
            args = [conv.args[0], relax.const(np.ascontiguousarray(wt)), relax.const(bias), stride, act_code]
            return relax.op.call_dps_packed("edgekit_conv3x3", args, out_ty)
    return None
