"""The native kernels of kernels/ from Python (ctypes), for tests and benchmarks, plus their build.

The TVM export links the same C objects into the model library; this module only builds them (`build`) and runs
the host build directly (`spmm_chw`, `dw3x3_chw`, `conv3x3_chw`, `dense`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, RuntimeUnavailable

KERNELS_DIR = Path(__file__).resolve().parents[2] / "kernels"
ACTS = {"none": 0, "relu": 1, "relu6": 2}
ISAS = {"auto": -1, "portable": 0, "avx2": 1, "neon": 2}

# Raw pointers (not ndpointer): its per-call checks cost microseconds, as much as a small kernel call; the
# wrappers below check shapes and dtypes themselves.
_P = ctypes.c_void_p


def build(arch: str = "host", tvm: bool = False) -> Path:
    """Builds the kernels for `arch` ("host" or "aarch64") with kernels/Makefile; returns the build folder.

    Args:
        arch: "host" or "aarch64" (cross compiler aarch64-linux-gnu-gcc).
        tvm: also build the TVM-FFI wrapper object (needs the apache-tvm-ffi headers).
    """
    if arch not in ("host", "aarch64"):
        raise EdgekitError(f"kernels: unknown arch {arch!r}; use host or aarch64")
    if shutil.which("make") is None:
        raise RuntimeUnavailable("building the kernels needs `make` and a C compiler")
    cmd = ["make", "-s", "-C", str(KERNELS_DIR), f"tvm-{arch}" if tvm else arch]
    if tvm:
        import tvm_ffi.libinfo

        cmd.append(f"TVMFFI_INCLUDE={tvm_ffi.libinfo.find_include_path()}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeUnavailable(f"building the {arch} kernels failed: {' | '.join(tail)[:400]}")
    return KERNELS_DIR / "build" / arch


def objects(arch: str = "host") -> list[Path]:
    """The C objects (kernels + TVM-FFI wrapper) that export_library links into a model library for `arch`."""
    out = build(arch, tvm=True)
    names = ["tvm_wrap.o", "dispatch.o", "generic_portable.o"]
    machine = os.uname().machine if arch == "host" else "aarch64"
    if machine == "x86_64":
        names += ["generic_avx2.o", "spmm_avx2.o"]
    elif machine == "aarch64":
        names += ["generic_neon.o", "spmm_neon.o"]
    return [out / n for n in names]


@functools.cache
def lib() -> ctypes.CDLL:
    """The host build, loaded once (built on first use)."""
    path = build("host") / "libedgekit_kernels.so"
    so = ctypes.CDLL(str(path))
    i32 = ctypes.c_int32
    so.ek_isa.restype = i32
    so.ek_isa_name.restype = ctypes.c_char_p
    so.ek_isa_name.argtypes = [i32]
    so.ek_set_isa.restype = i32
    so.ek_set_isa.argtypes = [i32]
    so.ek_spmm_chw.restype = None
    so.ek_spmm_chw.argtypes = [i32, i32, i32, _P, _P, _P, _P, _P, _P, i32]
    so.ek_dw3x3_chw.restype = None
    so.ek_dw3x3_chw.argtypes = [i32, i32, i32, i32, _P, _P, _P, _P, i32]
    so.ek_conv3x3_chw.restype = None
    so.ek_conv3x3_chw.argtypes = [i32, i32, i32, i32, i32, _P, _P, _P, _P, i32]
    so.ek_dense_chw.restype = None
    so.ek_dense_chw.argtypes = [i32, i32, _P, _P, _P, _P, i32]
    return so


def isa() -> str:
    """The instruction set the kernels use now ("avx2", "neon" or "portable")."""
    return lib().ek_isa_name(lib().ek_isa()).decode()


def set_isa(name: str) -> bool:
    """Forces an instruction set ("auto" = the best this CPU has); False if this CPU lacks it."""
    if name not in ISAS:
        raise EdgekitError(f"kernels: unknown isa {name!r}; choose from {sorted(ISAS)}")
    return lib().ek_set_isa(ISAS[name]) == 0


def aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised fp32 array whose data starts on an `align`-byte boundary (whole cache lines)."""
    n = int(np.prod(shape))
    raw = np.empty(n + align // 4, np.float32)
    off = (-raw.ctypes.data % align) // 4
    return raw[off : off + n].reshape(shape)


def csr(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (row_ptr int32, col_idx int32, values fp32) of a 2-D weight (rows = output channels)."""
    w = np.asarray(weight, np.float32).reshape(weight.shape[0], -1)
    rows, cols = np.nonzero(w)
    row_ptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=row_ptr[1:])
    return row_ptr, cols.astype(np.int32), np.ascontiguousarray(w[rows, cols], np.float32)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def _bias(bias: np.ndarray | None, n: int) -> np.ndarray | None:
    if bias is None:
        return None
    b = _f32(bias)
    if b.shape != (n,):
        raise EdgekitError(f"kernels: bias must have {n} entries, got shape {b.shape}")
    return b


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _act(act: str) -> int:
    if act not in ACTS:
        raise EdgekitError(f"kernels: unknown activation {act!r}; choose from {sorted(ACTS)}")
    return ACTS[act]


def spmm_chw(
    row_ptr: np.ndarray,
    col_idx: np.ndarray,
    values: np.ndarray,
    x: np.ndarray,
    bias: np.ndarray | None = None,
    act: str = "none",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Sparse 1x1 convolution: y[C_out, H, W] = act(W_csr @ x[C_in, H, W] + bias).

    Args:
        row_ptr, col_idx, values: the CSR weight (see `csr`), rows = output channels.
        x: input [C_in, H, W] (or [C_in, H*W]).
        bias: [C_out] or None.
        act: "none", "relu" or "relu6".
        out: optional compact fp32 output buffer [C_out, ...] (e.g. from `aligned_empty`).
    """
    rp, ci, val = (
        np.ascontiguousarray(row_ptr, np.int32),
        np.ascontiguousarray(col_idx, np.int32),
        _f32(values),
    )
    x = _f32(x)
    k, hw, m = x.shape[0], int(np.prod(x.shape[1:])), len(rp) - 1
    if (
        rp[0] != 0
        or rp[-1] != len(ci)
        or len(ci) != len(val)
        or np.any(np.diff(rp) < 0)
        or (len(ci) and (ci.min() < 0 or ci.max() >= k))
    ):
        raise EdgekitError("kernels: inconsistent CSR arrays for this input")
    y = out if out is not None else np.empty((m, *x.shape[1:]), np.float32)
    if y.dtype != np.float32 or not y.flags.c_contiguous or y.size != m * hw:
        raise EdgekitError(f"kernels: out must be a compact fp32 array of {m * hw} values")
    b = _bias(bias, m)
    lib().ek_spmm_chw(m, k, hw, _ptr(rp), _ptr(ci), _ptr(val), _ptr(b), _ptr(x), _ptr(y), _act(act))
    return y


def dw3x3_chw(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: int = 1, act: str = "none"
) -> np.ndarray:
    """Depthwise 3x3 convolution, padding 1: x[C, H, W], weight [C, 1, 3, 3] (or [C, 9])."""
    x = _f32(x)
    c, h, w = x.shape
    if stride not in (1, 2) or np.size(weight) != c * 9:
        raise EdgekitError(
            f"kernels: need stride 1 or 2 and {c * 9} weights, got {stride} and {np.shape(weight)}"
        )
    y = np.empty((c, (h - 1) // stride + 1, (w - 1) // stride + 1), np.float32)
    wt, b = _f32(weight), _bias(bias, c)
    lib().ek_dw3x3_chw(c, h, w, stride, _ptr(x), _ptr(wt), _ptr(b), _ptr(y), _act(act))
    return y


def conv3x3_chw(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: int = 1, act: str = "none"
) -> np.ndarray:
    """Dense 3x3 convolution, padding 1 (a CNN's stem): x[C_in, H, W], weight [C_out, C_in, 3, 3]."""
    x = _f32(x)
    cin, h, w = x.shape
    cout = weight.shape[0]
    if stride not in (1, 2) or tuple(weight.shape[1:]) != (cin, 3, 3):
        raise EdgekitError(f"kernels: need stride 1 or 2 and weight [C_out, {cin}, 3, 3], got {weight.shape}")
    y = np.empty((cout, (h - 1) // stride + 1, (w - 1) // stride + 1), np.float32)
    wt, b = _f32(weight), _bias(bias, cout)
    lib().ek_conv3x3_chw(cin, h, w, cout, stride, _ptr(x), _ptr(wt), _ptr(b), _ptr(y), _act(act))
    return y


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, act: str = "none") -> np.ndarray:
    """Fully connected layer on one vector: y[N] = act(weight[N, K] @ x[K] + bias)."""
    x = _f32(x).reshape(-1)
    wt = _f32(weight)
    if wt.ndim != 2 or wt.shape[1] != x.size:
        raise EdgekitError(f"kernels: need weight [N, {x.size}], got {wt.shape}")
    y = np.empty(wt.shape[0], np.float32)
    b = _bias(bias, wt.shape[0])
    lib().ek_dense_chw(wt.shape[0], x.size, _ptr(x), _ptr(wt), _ptr(b), _ptr(y), _act(act))
    return y
