"""The native routes (edgekit.importers.native): an ONNX file with an operator onnx2torch lacks, and a float .tflite
file written by edgekit's own export stage, compressed and quantised without a torch model; the stages that need
one are refused before anything runs, in one line naming what blocked the torch route."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, stage_record
from edgekit.targets import load_target

X_SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def hardmax_onnx(tmp_path_factory) -> Path:
    """The trained digits CNN (torch.onnx) with a Hardmax on its logits: ONNX Runtime runs it, onnx2torch cannot."""
    import onnx
    from onnx import helper

    from edgekit.export import onnx as onnx_export
    from edgekit.zoo import trained_digits_cnn

    d = tmp_path_factory.mktemp("native")
    model = onnx.load(str(onnx_export.export(trained_digits_cnn(), np.zeros(X_SHAPE, np.float32), d / "cnn.onnx")))
    out = model.graph.output[0]
    model.graph.node.append(helper.make_node("Hardmax", [out.name], ["onehot"], name="extra_hardmax", axis=1))
    out.name = "onehot"
    onnx.save(model, str(d / "hardmax.onnx"))
    return d / "hardmax.onnx"


@pytest.fixture(scope="module")
def cnn_tflite(tmp_path_factory) -> Path:
    """A float .tflite as edgekit's export stage writes it (standing in for a user's Keras model)."""
    from edgekit.export import tflite as tflite_export
    from edgekit.zoo import trained_digits_cnn

    path = tmp_path_factory.mktemp("tflite") / "cnn.tflite"
    return tflite_export.export(trained_digits_cnn(), np.zeros(X_SHAPE, np.float32), path)


def _ort_accuracy(path: Path) -> float:
    import onnxruntime as ort

    from edgekit.data import digits

    ds = digits()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: ds.x_test[i:i + 1]})[0] for i in range(len(ds.x_test))])
    return float((out.argmax(1) == ds.y_test).mean())


def test_onnx_native_route(hardmax_onnx: Path, tmp_path: Path):
    """compress (auto) runs check, baseline, INT8 search in ONNX Runtime, export, verify against ORT on the original
    file, measure; the plan skips prune for the operator; a recipe with prune is refused in one line."""
    from edgekit import api

    out = tmp_path / "auto"
    report = api.compress(str(hardmax_onnx), "host", data="digits", out=out, overrides={
        "quantize": {"trials": 4, "timing_runs": 5, "final_runs": 20}, "measure": {"runs": 20}}).report
    route = report["route"]
    assert route["name"] == "onnx-native" and route["blocked_by"]["op_type"] == "Hardmax"
    assert route["blocked_by"]["node"] == "extra_hardmax" and str(hardmax_onnx) in route["reference"]
    assert [next(iter(s)) for s in report["recipe"]["stages"]] == ["check", "baseline", "export", "quantize",
                                                                   "verify", "measure"]
    prune = next(t for t in report["plan"]["techniques"] if t["name"] == "prune")
    assert not prune["used"] and "Hardmax" in prune["why"] and "extra_hardmax" in prune["why"]
    arts = {a["path"]: a for a in report["artifacts"]}
    assert set(arts) == {"artifacts/model_fp32.onnx", "artifacts/model_int8.onnx"} | (
        {"artifacts/model_mixed.onnx"} & set(arts))
    for a in arts.values():
        v = a["verification"]
        assert v["passed"] and str(hardmax_onnx) in v["reference"] and a["latency"]["source"] == "measured"
    assert arts["artifacts/model_fp32.onnx"]["verification"]["max_abs_err"] == 0.0  # the cleaned file, same outputs
    assert arts["artifacts/model_int8.onnx"]["quant"]["backend"] == "onnxruntime"
    # The baseline is ONNX Runtime on the original file: its accuracy, exactly.
    assert stage_record(report, "baseline")["metrics"]["accuracy"] == pytest.approx(_ort_accuracy(hardmax_onnx))
    assert "onnx-native" in (out / "report.md").read_text()

    refused = tmp_path / "lottery"
    r = run_cli("compress", str(hardmax_onnx), "--data", "digits", "--recipe", "lottery", "--out", str(refused))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert all(n in lines[0] for n in ("prune", "Hardmax", "extra_hardmax")), lines[0]
    assert not refused.exists()


def test_torch_stages_are_refused_before_anything_runs(hardmax_onnx: Path, cnn_tflite: Path, tmp_path: Path):
    """Explicit TFLite export of the ONNX file, decomposition of the .tflite file: one line, nothing written."""
    from edgekit import api
    from edgekit.errors import SettingsError

    cases = [(hardmax_onnx, "basic", {"export": {"formats": ["tflite"]}}, ("export", "Hardmax", "extra_hardmax")),
             (cnn_tflite, "decompose", None, ("decompose", "TFLite")),
             (cnn_tflite, "basic", {"export": {"formats": ["onnx"]}}, ("export", "TFLite", "onnx model files only"))]
    for model, recipe, overrides, needles in cases:
        out = tmp_path / f"{model.stem}-{recipe}"
        with pytest.raises(SettingsError) as e:
            api.compress(str(model), "host", recipe=recipe, data="digits", overrides=overrides, out=out)
        assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)
        assert not out.exists()


def test_failed_import_check_runs_the_native_route(hardmax_onnx: Path, tmp_path: Path, monkeypatch):
    """A conversion that the check against ONNX Runtime refuses is not used: the file itself is compressed (the
    basic recipe's TFLite export is skipped, with the reason)."""
    import onnx

    from edgekit import api
    from edgekit.importers import onnx_check

    model = onnx.load(str(hardmax_onnx))
    model.graph.node.pop()  # drop the Hardmax: onnx2torch converts this file
    model.graph.output[0].name = model.graph.node[-1].output[0]
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))

    def disagree(bundle, x, data):
        raise onnx_check.ImportCheckError(f"{path}: the torch conversion disagrees with onnxruntime (test)")

    monkeypatch.setattr(onnx_check, "check_import", disagree)
    result = api.compress(str(path), "host", recipe="basic", data="digits", out=tmp_path / "run", resume=False)
    route = result.report["route"]
    assert route["name"] == "onnx-native" and "disagrees" in route["why"] and "blocked_by" not in route
    assert [a["format"] for a in result.report["artifacts"]] == ["onnx"]
    assert result.report["artifacts"][0]["verification"]["passed"]
    skipped = stage_record(result.report, "export")["details"]["skipped"]
    # the host target's torch-made formats (TFLite, ExecuTorch) are skipped, each with the reason
    assert set(skipped) == {"tflite", "pte"} and all("disagrees" in why for why in skipped.values())


def test_tflite_model_compress_and_quantize(cnn_tflite: Path, tmp_path: Path):
    """A float .tflite: compress (auto) and `edgekit quantize` write a verified, measured INT8 .tflite through the
    LiteRT Quantizer, no torch model in the loop; the float artifact is the file itself."""
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.fileio import sha256_file

    out = tmp_path / "quant"
    r = run_cli("quantize", str(cnn_tflite), "--data", "digits", "--trials", "4", "--out", str(out))  # LiteRT trials
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["route"]["name"] == "tflite-native" and report["import"]["input"]["shape"] == list(X_SHAPE)
    arts = {a["path"]: a for a in report["artifacts"]}
    assert arts["artifacts/model_fp32.tflite"]["sha256"] == sha256_file(cnn_tflite)
    int8 = arts["artifacts/model_int8.tflite"]
    assert int8["quant"]["backend"] == "ai-edge-quantizer" and int8["precision"] == "int8"
    for a in arts.values():
        assert a["format"] == "tflite" and a["verification"]["passed"] and a["latency"]["source"] == "measured"
        assert str(cnn_tflite) in a["verification"]["reference"]
    it = Interpreter(model_path=str(out / "artifacts/model_int8.tflite"))
    convs = [op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]
    weights = {t["index"]: t for t in it.get_tensor_details()}
    assert convs and all(weights[op["inputs"][1]]["dtype"] == np.int8 for op in convs)
    assert stage_record(report, "quantize")["details"]["searches"][0]["backend"] == "ai-edge-quantizer"

    from edgekit import api

    report = api.compress(str(cnn_tflite), "host", data="digits", out=tmp_path / "auto", overrides={
        "quantize": {"trials": 3, "timing_runs": 5, "final_runs": 20}, "measure": {"runs": 20}}).report
    assert [s["name"] for s in report["stages"]] == ["check", "baseline", "export", "quantize", "verify", "measure"]
    check = stage_record(report, "check")["details"]["findings"]
    assert {f["runtime"] for f in check} == {r.name for r in load_target("host").runtimes}  # the target's runtimes
    assert "needs a torch model" in next(f for f in check if f["runtime"] == "onnxruntime")["summary"]
    assert {a["format"] for a in report["artifacts"]} == {"tflite"} and report["summary"]["artifact"]
