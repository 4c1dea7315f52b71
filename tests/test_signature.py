"""The model's signature (edgekit.signature) is part of the contract: report.json records it, every artifact keeps
it where its format can (names, dynamic dimensions, all outputs) or says in one line why not, and verification
runs kept-signature artifacts at a second shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from conftest import one_line_error, run_cli
from edgekit.export import _signature as sig
from edgekit.export import onnx as onnx_export
from edgekit.runtimes import load_runner
from edgekit.signature import Signature, TensorSpec, from_onnx, from_tflite


class TwoHeads(nn.Module):
    """Convolutions and a global mean: any batch and width; two outputs (class scores and a feature map)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1, stride=2), \
            nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.head(y.mean((2, 3))), y


class FixedWidth(nn.Module):
    """Flattens the feature map into a linear layer: its code fixes height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _sig_bw() -> Signature:
    return Signature((TensorSpec("x", "float32", ("batch", 3, 16, "width")),),
                     (TensorSpec("logits", "float32", ("batch", 5)), TensorSpec("save/map.tmp_0", "float32",
                                                                                  ("batch", 4, 8, ""))), "test",
                     metadata=(("character", "a\nb"),))


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "pte"])
def test_exporters_keep_names_and_dynamic_batch_and_width(fmt: str, tmp_path: Path):
    from edgekit import export as exporters

    module = exporters.get(fmt)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 32)).astype(np.float32)
    path = module.export(TwoHeads().eval(), x, tmp_path / f"m{module.SUFFIX}", signature=_sig_bw())
    record = sig.record(_sig_bw(), sig.read(fmt, path), sig.fallback_note(path))
    assert record == {"kept": True, "why": ""}
    runner = load_runner(module.RUNTIME, path)
    if fmt != "pte":  # a .pte carries no names; its sidecar records them
        assert runner.output_names == ["logits", "save/map.tmp_0"]
    big = np.random.default_rng(1).standard_normal((4, 3, 16, 48)).astype(np.float32)
    got = runner.outputs(big)
    with torch.no_grad():
        ref = [t.numpy() for t in TwoHeads().eval()(torch.as_tensor(big))]
    assert [g.shape for g in got] == [(4, 5), (4, 4, 8, 24)]
    assert max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)) < 1e-4
    if fmt == "onnx":
        proto = onnx.load(str(path))
        assert dict((p.key, p.value) for p in proto.metadata_props) == {"character": "a\nb"}
        assert from_onnx(proto).inputs[0].shape == ("batch", 3, 16, "width")
    if fmt == "tflite":
        assert from_tflite(path).inputs[0].dynamic_axes == (0, 3)


def test_executorch_bounds_keep_the_largest_input_small():
    """ExecuTorch plans memory for the largest input a program accepts: with a budget, a big input gets a small
    batch bound and wide axes shrink towards the example's size; a small input keeps the wide bounds."""
    import torch

    from edgekit.export._signature import bounded_attempts

    def uppers(shape: tuple[int, ...], dims: tuple[int | str, ...], mb: float | None) -> list[dict[int, int]]:
        sig = Signature((TensorSpec("x", "float32", dims),), (TensorSpec("y", "float32", ("batch", 1)),), "test")
        return [{a: d.max for a, d in dyn.items()} for _, dyn in bounded_attempts(sig, torch.zeros(shape), mb)
                if dyn is not None]

    big = (1, 3, 736, 992)  # 8.8 MB per input
    assert uppers(big, ("batch", 3, 736, 992), None) == [{0: 1024}, {0: 8}]
    assert uppers(big, ("batch", 3, 736, 992), 32) == [{0: 3}, {0: 3}]
    *wide, batch_alone = uppers(big, ("batch", 3, "h", "w"), 32)
    assert len(wide) == 2 and batch_alone == {0: 3}
    assert wide == [{0: 3, 2: 736, 3: 992}] * 2  # the example's size, and the batch that fits beside it
    for upper in uppers((1, 3, 224, 224), ("batch", 3, "h", "w"), 32)[:2]:  # shrunk, never below the example
        assert upper[2] >= 224 and upper[3] >= 224 and upper[0] >= 2
        assert upper[0] * 3 * upper[2] * upper[3] * 4 <= 32 * 2 ** 20
    assert uppers((1, 1, 8, 8), ("batch", 1, 8, 8), 32) == [{0: 1024}, {0: 8}]


def test_a_dimension_the_code_fixes_is_said_in_one_line(tmp_path: Path):
    spec = Signature((TensorSpec("x", "float32", ("batch", 3, 8, "width")),),
                     (TensorSpec("y", "float32", ("batch", 3)),), "test")
    x = np.zeros((1, 3, 8, 16), np.float32)
    path = onnx_export.export(FixedWidth().eval(), x, tmp_path / "m.onnx", signature=spec)
    record = sig.record(spec, sig.read("onnx", path), sig.fallback_note(path))
    assert not record["kept"] and "\n" not in record["why"]
    assert "dim 3 16" in record["why"] and "dynamic (width)" in record["why"]
    # the batch stays dynamic: only what the code fixes is lost
    assert from_onnx(onnx.load(str(path))).inputs[0].shape[0] == "batch"
    # a format that keeps no signature says so too
    assert sig.record(spec, None, "TVM compiles the model for one static input shape")["why"] == \
        "TVM compiles the model for one static input shape"


def test_compress_keeps_the_signature_and_verifies_at_two_shapes(tmp_path: Path):
    import edgekit

    x = np.random.default_rng(0).standard_normal((40, 3, 16, 32)).astype(np.float32)
    result = edgekit.compress(TwoHeads(), "host", data=(x,), example_input=x[:1], dynamic=(0, 3), recipe="basic",
                              out=tmp_path / "run", overrides={"export": {"formats": ["onnx", "pte"]}})
    report = result.report
    assert report["signature"]["inputs"][0]["dynamic"] == [0, 3]
    assert [o["name"] for o in report["signature"]["outputs"]] == ["output", "output_1"]
    for a in report["artifacts"]:
        v = a["verification"]
        assert a["signature"] == {"kept": True, "why": ""}, a["path"]
        assert [o["name"] for o in v["outputs"]] == ["output", "output_1"] and v["passed"]
        assert v["shapes"][0]["shape"] == [2, 3, 16, 64] and v["shapes"][0]["passed"], v["shapes"]
    assert report["summary"]["signature_kept"] is True


def _two_input_model(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
               numpy_helper.from_array((rng.standard_normal((8, 8)) * 0.1).astype(np.float32), "U")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("MatMul", ["state", "U"], ["su"]),
             helper.make_node("Add", ["xw", "su"], ["pre"]), helper.make_node("Cast", ["k"], ["kf"], to=1),
             helper.make_node("Mul", ["pre", "kf"], ["scaled"]), helper.make_node("Tanh", ["scaled"], ["new_state"]),
             helper.make_node("ReduceMean", ["new_state"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Sigmoid", ["m"], ["prob"])]
    graph = helper.make_graph(nodes, "stateful", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 8]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1])], [
        helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("new_state", TensorProto.FLOAT, ["batch", 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_several_inputs_an_integer_input_and_two_outputs(tmp_path: Path):
    model = _two_input_model(tmp_path / "stateful.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((48, 1, 16)).astype(np.float32),
             state=(0.5 * rng.standard_normal((48, 1, 8))).astype(np.float32), k=np.ones((48, 1), np.int64))
    r = run_cli("compress", str(model), "--data", str(tmp_path / "data.npz"), "--recipe", "basic", "--out",
                str(tmp_path / "run"), "--input-shape", "x=1,16 state=1,8 k=1")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [t["name"] for t in report["signature"]["inputs"]] == ["x", "state", "k"]
    assert report["signature"]["inputs"][2]["dtype"] == "int64"
    (art,) = report["artifacts"]
    assert art["signature"]["kept"] and [o["name"] for o in art["verification"]["outputs"]] == ["prob", "new_state"]
    assert all(o["max_abs_ref"] > 0 for o in art["verification"]["outputs"])  # real data: k = 1, not zeros
    # without data the integer input gets zeros and the state zeros, and the report says so
    import edgekit

    described = edgekit.compress(str(model), "host", recipe="basic", out=tmp_path / "run2").report["data"]["description"]
    assert "state [1, 8]: a recurrent state" in described and "k [1]: int64 input: zeros" in described
    # a shape for an input the file lacks is one line and exit 2
    one_line_error(run_cli("compress", str(model), "--input-shape", "audio=1,16", "--out", str(tmp_path / "r3")))


def test_an_unchanged_onnx_file_is_its_own_onnx_artifact(tmp_path: Path):
    path = tmp_path / "dyn.onnx"
    x = torch.zeros(1, 3, 16, 32)
    torch.onnx.export(TwoHeads().eval(), (x,), str(path), dynamo=True, input_names=["img"],
                      output_names=["scores", "map"], dynamic_shapes=({0: torch.export.Dim.AUTO,
                                                                       3: torch.export.Dim.AUTO},)).save(str(path))
    import edgekit

    report = edgekit.compress(str(path), "host", recipe="basic", out=tmp_path / "run", input_shape=(1, 3, 16, 32),
                              overrides={"export": {"formats": ["onnx"]}}).report
    (art,) = report["artifacts"]
    assert (tmp_path / "run" / art["path"]).read_bytes() == path.read_bytes()
    assert art["signature"]["kept"] and art["verification"]["shapes"][0]["passed"]
    one_line_error(run_cli("compress", str(path), "--dynamic", "0", "--out", str(tmp_path / "r2")))
