"""`edgekit check` and the capability rules: per-layer verdicts, blockers named, prunable layers per target."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_cli
from edgekit.targets import load_target


def test_check_names_the_layers_that_block_sparse_inference():
    """The digits CNN does not qualify: its stem is 3x3 stride 1 on one channel and its 3x3 convs are not 1x1."""
    r = run_cli("check", "--target", "rpi4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    litert = next(v for v in out["runtimes"] if v["runtime"] == "litert")
    assert not litert["sparse"] and not litert["structure_ok"]
    whys = " | ".join(b["why"] for b in litert["blockers"])
    assert "stem does not match" in whys
    assert "CONV_2D 3x3 stride 1x1" in whys  # the second 3x3 conv cannot sit in a sparse group
    blocking = [lv for lv in litert["layers"] if lv["sparse_reason"].startswith("blocks sparse")]
    assert {lv["name"] for lv in blocking} >= {"0", "3"}  # torch module names, not TFLite tensor names
    assert all(lv["int8"] for lv in litert["layers"])  # LiteRT has INT8 kernels for every op of this model
    ort = next(v for v in out["runtimes"] if v["runtime"] == "onnxruntime")
    assert "no sparse convolution kernels" in ort["blockers"][0]["why"]


def test_check_a_qualifying_model_at_an_assumed_sparsity(monkeypatch):
    """In-process (typer's runner): the converter is already imported by the other in-process tests."""
    from typer.testing import CliRunner

    from edgekit.cli import app
    from edgekit.commands import check

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    check.register(app)
    r = CliRunner().invoke(app, ["check", "test_sparsify:tiny_mobilenet", "--target", "host", "--sparsity", "0.9",
                                 "--json", "--trust-model-code"])
    assert r.exit_code == 0, r.output
    # In-process, the converter's own progress lines share stdout with the JSON.
    report = json.loads(r.stdout[r.stdout.index('{\n "model"'):])
    litert = next(v for v in report["runtimes"] if v["runtime"] == "litert")
    assert litert["structure_ok"] and litert["zero_fraction"] == pytest.approx(0.9, abs=0.01)
    assert "sparse on ARM and WASM" in litert["summary"]
    if "avx" in load_target("host").simd:
        assert not litert["sparse"] and "not on this AVX host" in litert["summary"]
        assert [b["layer"] for b in litert["blockers"]] == ["CPU"]
    assert {lv["name"] for lv in litert["layers"] if lv["sparse_reason"].startswith("1x1 conv")} == {"4", "8", "10"}


@pytest.mark.parametrize("args, message", [
    (("check", "--target", "nope"), "unknown target"),
    (("check", "--target", "rpi4", "--sparsity", "1.5"), "--sparsity must be in"),
])
def test_check_bad_input_is_one_line_exit_2(args, message):
    r = run_cli(*args)
    assert r.returncode == 2
    assert message in r.stderr.lower() or message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_prunable_layers_follow_the_target():
    from edgekit.rules import prunable_layers
    from edgekit.zoo import digits_cnn
    from test_sparsify import tiny_mobilenet

    net = tiny_mobilenet()
    arm = prunable_layers(net, load_target("rpi4"), (1, 3, 32, 32))
    assert set(arm) == {"4", "8", "10"} and all("1x1 conv" in why for why in arm.values())
    if "avx" in load_target("host").simd:
        assert prunable_layers(net, load_target("host"), (1, 3, 32, 32)) == {}  # XNNPACK stays dense here
    assert prunable_layers(digits_cnn(), load_target("rpi4"), (1, 1, 8, 8)) == {}  # stem does not qualify
