"""The native kernels (kernels/): every ISA path this machine has against numpy/torch, and the NEON path under qemu."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit import kernels
from edgekit.errors import EdgekitError

HOST_ISAS = [isa for isa in ("portable", "avx2", "neon") if kernels.set_isa(isa)]
kernels.set_isa("auto")


@pytest.fixture(params=HOST_ISAS)
def isa(request):
    assert kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa("auto")


def _act(y: np.ndarray, act: str) -> np.ndarray:
    return {"none": y, "relu": np.maximum(y, 0), "relu6": np.clip(y, 0, 6)}[act]


def _pruned(rng: np.random.Generator, shape: tuple[int, ...], zeros: float) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < zeros] = 0
    return w


def test_isa_choice_is_the_best_the_cpu_has():
    assert kernels.isa() in HOST_ISAS
    assert kernels.isa() == HOST_ISAS[-1]  # auto picks the widest path this CPU supports
    assert "portable" in HOST_ISAS
    with pytest.raises(EdgekitError):
        kernels.set_isa("sse9")


def test_csr_round_trip():
    w = _pruned(np.random.default_rng(1), (7, 11), 0.8)
    w[3] = 0  # an empty row
    row_ptr, col_idx, values = kernels.csr(w)
    assert row_ptr[0] == 0 and row_ptr[-1] == len(values) == np.count_nonzero(w)
    dense = np.zeros_like(w)
    for r in range(w.shape[0]):
        dense[r, col_idx[row_ptr[r] : row_ptr[r + 1]]] = values[row_ptr[r] : row_ptr[r + 1]]
    np.testing.assert_array_equal(dense, w)


@pytest.mark.parametrize(
    "cin,cout,hw,zeros,act",
    [
        (96, 576, (14, 14), 0.9, "relu6"),
        (576, 96, (14, 14), 0.95, "none"),
        (24, 144, (28, 28), 0.7, "relu"),
        (16, 8, (5, 7), 0.5, "relu6"),
        (8, 4, (1, 1), 0.0, "none"),
        (32, 16, (6, 6), 1.0, "relu"),
    ],
)
def test_spmm_matches_dense_conv(isa, cin, cout, hw, zeros, act):
    rng = np.random.default_rng(cin * 7 + cout)
    w = _pruned(rng, (cout, cin), zeros)
    b = rng.standard_normal(cout).astype(np.float32)
    x = 3 * rng.standard_normal((cin, *hw)).astype(np.float32)
    ref = _act(np.einsum("oi,ihw->ohw", w.astype(np.float64), x) + b[:, None, None], act)
    y = kernels.spmm_chw(*kernels.csr(w), x, b, act)
    assert y.shape == (cout, *hw)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_spmm_without_bias_and_into_aligned_buffer():
    rng = np.random.default_rng(3)
    w, x = _pruned(rng, (40, 24), 0.9), rng.standard_normal((24, 9, 9)).astype(np.float32)
    out = kernels.aligned_empty((40, 9, 9))
    assert out.ctypes.data % 64 == 0
    y = kernels.spmm_chw(*kernels.csr(w), x, out=out)
    assert y is out
    np.testing.assert_allclose(y, np.einsum("oi,ihw->ohw", w, x), rtol=1e-4, atol=1e-4)


def test_spmm_rejects_bad_csr():
    w = _pruned(np.random.default_rng(4), (4, 6), 0.5)
    row_ptr, col_idx, values = kernels.csr(w)
    x = np.ones((3, 2, 2), np.float32)  # fewer input channels than the CSR's columns use
    with pytest.raises(EdgekitError):
        kernels.spmm_chw(row_ptr, col_idx, values, x)
    with pytest.raises(EdgekitError):
        kernels.spmm_chw(row_ptr, col_idx, values[:-1], np.ones((6, 2, 2), np.float32))
    with pytest.raises(EdgekitError):
        kernels.spmm_chw(row_ptr, col_idx, values, np.ones((6, 2, 2), np.float32), act="gelu")


@pytest.mark.parametrize(
    "c,h,w,stride,act",
    [
        (32, 112, 112, 1, "relu6"),
        (96, 57, 57, 2, "relu6"),
        (8, 7, 10, 2, "relu"),
        (5, 1, 1, 1, "none"),
        (3, 2, 9, 1, "relu"),
    ],
)
def test_depthwise_matches_torch(isa, c, h, w, stride, act):
    rng = np.random.default_rng(c + h)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x[None]), torch.from_numpy(wt), torch.from_numpy(b), stride, 1, groups=c)
    np.testing.assert_allclose(
        kernels.dw3x3_chw(x, wt, b, stride, act), _act(ref[0].numpy(), act), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    "cin,cout,h,w,stride,act",
    [
        (3, 32, 224, 224, 2, "relu6"),
        (3, 6, 15, 17, 1, "none"),
        (1, 5, 8, 8, 2, "relu"),
        (4, 33, 9, 3, 2, "relu6"),
    ],
)
def test_stem_conv_matches_torch(isa, cin, cout, h, w, stride, act):
    rng = np.random.default_rng(cin + cout)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x[None]), torch.from_numpy(wt), torch.from_numpy(b), stride, 1)
    np.testing.assert_allclose(
        kernels.conv3x3_chw(x, wt, b, stride, act), _act(ref[0].numpy(), act), rtol=1e-4, atol=1e-4
    )


def test_host_c_driver_passes():
    """The self-checking C driver (every kernel, every ISA, tails and strides) built and run natively."""
    r = subprocess.run(
        ["make", "-s", "-C", str(kernels.KERNELS_DIR), "test-host"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failure(s)" in r.stdout


@pytest.mark.skipif(
    not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-gcc")),
    reason="needs qemu-user and gcc-aarch64-linux-gnu (make system-deps)",
)
def test_neon_path_under_qemu():
    """The aarch64 build checks its NEON and portable paths on an emulated Cortex-A72 (correctness only: qemu
    timings are never latencies)."""
    kernels.build("aarch64")
    r = subprocess.run(
        ["make", "-s", "-C", str(kernels.KERNELS_DIR), "test-aarch64"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "isa neon: ok" in r.stdout and "isa portable: ok" in r.stdout
    assert "default isa: neon" in r.stdout


@pytest.mark.parametrize("n,k,act", [(1000, 1280, "none"), (10, 33, "relu"), (3, 5, "relu6")])
def test_dense_matches_numpy(isa, n, k, act):
    rng = np.random.default_rng(n + k)
    x, w = rng.standard_normal(k).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    np.testing.assert_allclose(
        kernels.dense(x, w, b, act), _act(w.astype(np.float64) @ x + b, act), rtol=1e-4, atol=1e-4
    )
