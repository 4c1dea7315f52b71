"""The `tvm` export: Relax import, convolutions on edgekit's kernels, the rest compiled by TVM, verified vs torch."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("tvm")

from edgekit.errors import InputError, RuntimeUnavailable  # noqa: E402
from edgekit.export import formats  # noqa: E402
from edgekit.export import tvm as tvm_export  # noqa: E402
from edgekit.export._tvm_kernels import KernelPolicy  # noqa: E402
from edgekit.export.verify import verify_artifact  # noqa: E402
from edgekit.runtimes import load_runner  # noqa: E402


class Block(nn.Module):
    """An inverted residual block (expand 1x1, depthwise 3x3, project 1x1, residual) as in MobileNetV2."""

    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(),
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def tiny_mobilenet(zeros: float = 0.9) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        Block(16, 4),
        nn.Conv2d(16, 32, 1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, 2, 1, groups=32),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics, so folding them is tested
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
            if isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1):
                w = mod.weight
                w[torch.rand_like(w) < zeros] = 0
    return m.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_mobilenet()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    path = tvm_export.export(model, x, tmp_path_factory.mktemp("tvm") / "tiny.tvm.so", tuning_dir=None)
    return model, x, path


def test_tvm_is_an_export_format():
    assert "tvm" in formats()
    assert tvm_export.RUNTIME == "tvm"


def test_tiny_model_runs_on_the_kernels_and_matches_torch(tiny):
    model, x, path = tiny
    meta = json.loads(tvm_export.sidecar(path).read_text())
    # stem -> conv3x3; both depthwise -> dw3x3; the three pruned 1x1 convs -> spmm (BatchNorm folded in first);
    # the classifier -> dense
    assert meta["kernel_counts"] == {"spmm": 3, "dw3x3": 2, "conv3x3": 1, "dense": 1}
    assert all(layer["zero_fraction"] >= 0.5 for layer in meta["kernels"] if layer["kernel"] == "spmm")
    assert {layer["act"] for layer in meta["kernels"]} >= {"relu6", "relu", "none"}
    assert meta["input_shape"] == [1, 3, 32, 32]
    runner = load_runner("tvm", path)
    assert runner.input_shape == (1, 3, 32, 32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = runner(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_verify_artifact_accepts_the_tvm_artifact(tiny):
    model, _, path = tiny
    xs = np.random.default_rng(1).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(xs)).numpy()
    rec = verify_artifact(path, "tvm", ref, xs)
    assert rec["passed"], rec
    assert rec["inputs"] == 4 and rec["runtime"].startswith("tvm ")


def test_dense_1x1_layers_stay_with_tvm(tmp_path):
    """Below the zero-fraction threshold a 1x1 conv is not sparse-worthy: TVM compiles it, results still match."""
    model = tiny_mobilenet(zeros=0.2)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16), dtype=np.float32)
    path = tvm_export.export(
        model,
        x,
        tmp_path / "dense.tvm.so",
        policy=KernelPolicy(sparse_min_zeros=0.5, depthwise=False, dense=False),
    )
    meta = json.loads(tvm_export.sidecar(path).read_text())
    assert meta["kernel_counts"] == {"spmm": 0, "dw3x3": 0, "conv3x3": 1, "dense": 0}
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        load_runner("tvm", path)(x), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max())
    )


def test_runner_rejects_wrong_shape_and_foreign_files(tiny, tmp_path):
    _, _, path = tiny
    with pytest.raises(InputError):
        load_runner("tvm", path)(np.zeros((1, 3, 16, 16), np.float32))
    bogus = tmp_path / "x.tvm.so"
    bogus.write_bytes(b"not a library")
    with pytest.raises(InputError):
        load_runner("tvm", bogus)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs gcc-aarch64-linux-gnu")
def test_aarch64_artifact_builds(tmp_path):
    """rpi4: TVM compiles for the aarch64 triple and links the NEON kernels with the cross compiler."""
    model = tiny_mobilenet()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    path = tvm_export.export(model, x, tmp_path / "tiny_rpi4.tvm.so", target="rpi4")
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    meta = json.loads(tvm_export.sidecar(path).read_text())
    assert meta["arch"] == "aarch64" and meta["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    assert meta["kernel_counts"]["spmm"] == 3
    if os.uname().machine != "aarch64":
        with pytest.raises(RuntimeUnavailable):
            load_runner("tvm", path)
