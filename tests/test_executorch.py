"""ExecuTorch (`pte`): export FP32 / INT8 through the XNNPACK partitioner, verification in the ExecuTorch runtime,
delegation records, ETDump per-operator profiles mapped onto layers, per-layer accuracy, bad files, the policy
backend and `edgekit check`'s partitioner verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import run_cli
from edgekit.errors import InputError
from edgekit.export import pte
from edgekit.export.verify import verify_artifact
from edgekit.runtimes.executorch import load, per_op_from_harness, per_op_profile

SHAPE = (1, 3, 16, 16)


class TinyNet(nn.Module):
    """conv-BN-ReLU, a 1x1 conv, a depthwise conv, a residual add, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + torch.relu(self.dw(torch.relu(self.pw(x))))
        return self.head(x.mean((2, 3), keepdim=True).flatten(1))


class WithFallback(nn.Module):
    """cumsum has no XNNPACK config and mean without keepdim is declined: both run on portable kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cumsum(torch.relu(self.conv(x)).mean((2, 3)), 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyNet().eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    calib = rng.standard_normal((16, *SHAPE[1:]), dtype=np.float32)
    held = rng.standard_normal((16, *SHAPE[1:]), dtype=np.float32)
    d = tmp_path_factory.mktemp("pte")
    fp32 = pte.export(model, x, d / "m_fp32.pte", probe_inputs=held[:4])
    int8 = pte.export(model, x, d / "m_int8.pte", calibration=calib, probe_inputs=held[:4])
    with torch.no_grad():
        ref = model(torch.as_tensor(held)).numpy()
    return {"model": model, "x": x, "held": held, "ref": ref, "fp32": fp32, "int8": int8, "dir": d}


def test_fp32_export_is_delegated_and_verified(tiny):
    side = pte.read_sidecar(tiny["fp32"])
    assert side["precision"] == "fp32" and side["delegated_fraction"] == 1.0 and side["portable_ops"] == {}
    assert side["delegated_ops"]["aten.convolution.default"] == 3 and side["delegated_ops"]["aten.linear.default"] == 1
    convs = [o for o in side["ops"] if o["op"] == "aten.convolution.default"]
    assert [o["layer"] for o in convs] == ["stem.0", "pw", "dw"] and convs[0]["inputs"] == [[1, 3, 16, 16],
                                                                                              [8, 3, 3, 3]]
    runner = load(tiny["fp32"], 1)
    assert runner.input_shape == SHAPE and runner.runtime.startswith("executorch 1.5.1")
    v = verify_artifact(tiny["fp32"], "executorch", tiny["ref"], tiny["held"])
    assert v["passed"] and v["max_abs_err"] < 1e-4 and v["top1_agreement"] == 1.0


def test_int8_export_quantises_and_agrees_with_the_float_model(tiny):
    side = pte.read_sidecar(tiny["int8"])
    assert side["precision"] == "int8" and side["quantizer"] == "XNNPACKQuantizer" and side["delegated_fraction"] == 1.0
    assert side["delegated_ops"]["quantized_decomposed.quantize_per_tensor.default"] >= 1
    assert {o["dtype"] for o in side["ops"] if o["op"] == "aten.convolution.default"} == {"int8"}
    got = np.concatenate([load(tiny["int8"], 1)(tiny["held"][i:i + 1]) for i in range(len(tiny["held"]))])
    err = np.abs(got - tiny["ref"]).max()
    assert 0 < err < 0.1 * np.abs(tiny["ref"]).max()  # quantised: not bit-exact, but close
    v = verify_artifact(tiny["int8"], "executorch", tiny["ref"], tiny["held"],
                        tolerance={"max_abs_err": None, "min_top1": 0.8})
    assert v["passed"]


def test_per_layer_accuracy_in_the_runtime(tiny):
    f32, i8 = pte.read_sidecar(tiny["fp32"])["layers"], pte.read_sidecar(tiny["int8"])["layers"]
    for layers in (f32, i8):
        assert [r["layer"] for r in layers["rows"]] == ["stem.0", "pw", "dw", "head"]
        assert layers["probe_vs_artifact_max_abs"] == 0.0  # the debug build computes what the artifact computes
    # Float: the delegate matches torch to rounding; the stem reads the model input itself (nothing to compare).
    assert f32["rows"][0]["sqnr_in_db"] is None and all(r["sqnr_in_db"] > 80 for r in f32["rows"][1:])
    assert f32["output_sqnr_db"] > 80 and f32["grows"] == []
    # INT8: every layer reads a quantised tensor; its error is real and finite, far below float's.
    assert all(r["int8_input"] for r in i8["rows"])
    assert all(10 < r["sqnr_in_db"] < 60 for r in i8["rows"]) and i8["output_sqnr_db"] < 60
    for r in i8["rows"]:
        assert r["drop_db"] == pytest.approx(r["sqnr_in_db"] - r["sqnr_out_db"], abs=0.02)


def test_etdump_profile_maps_xnnpack_operators_to_layers(tiny):
    prof = per_op_profile(tiny["fp32"], tiny["x"], 1, runs=3, warmup=1)
    assert prof["runs"] == 3 and prof["mapped"]
    by_layer = {o["layer"]: o for o in prof["per_op"] if o["layer"]}
    assert by_layer["stem.0"]["type"].startswith("Convolution")
    assert by_layer["pw"]["type"].startswith(("Fully Connected", "Convolution"))  # XNNPACK runs 1x1 convs as GEMMs
    assert "DWConv" in by_layer["dw"]["type"] and by_layer["head"]["type"].startswith("Fully Connected")
    assert by_layer["stem.0"]["signature"].endswith("float[1, 8, 16, 16]")
    assert all(o["ms"] >= 0 for o in prof["per_op"]) and prof["execute_ms"] > 0


def test_harness_runs_pte_and_the_host_decodes_its_etdump(tiny):
    import subprocess
    import sys

    from edgekit.devices import harness

    r = subprocess.run([sys.executable, harness.__file__, str(tiny["int8"]), "--runs", "5", "--warmup", "1",
                        "--profile-runs", "2"], capture_output=True, text=True, timeout=300)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["ok"] and res["format"] == "pte" and res["runtime"].startswith("executorch 1.5.1")
    assert res["per_op"] == [] and res["etdump_b64"] and res["etdump_skip_runs"] == 1
    prof = per_op_from_harness(res, tiny["int8"])
    assert prof["runs"] == 2 and prof["mapped"] and "etdump_b64" not in res
    assert [o["layer"] for o in prof["per_op"] if o["layer"] in ("stem.0", "pw", "dw", "head")] == \
        ["stem.0", "pw", "dw", "head"]


def test_fallback_operators_are_recorded_and_profiled(tmp_path):
    from edgekit.rules.executorch import delegation_report

    model = WithFallback().eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8), dtype=np.float32)
    path = pte.export(model, x, tmp_path / "f.pte")
    side = pte.read_sidecar(path)
    assert side["portable_ops"] == {"aten.cumsum.default": 1, "aten.mean.dim": 1}
    assert 0 < side["delegated_fraction"] < 1 and side["delegated_subgraphs"] == 2
    assert np.allclose(load(path, 1)(x), model(torch.as_tensor(x)).detach().numpy(), atol=1e-5)
    ops = per_op_profile(path, x, 1, runs=2, warmup=1)["per_op"]
    assert {o["op"] for o in ops if o["type"].startswith("native_call_")} == {"aten.mean.dim", "aten.cumsum.default"}
    report = delegation_report(model, (1, 3, 8, 8))
    assert "keepdim" in report["reasons"]["aten_mean_dim"]


def test_bad_pte_files_are_one_line_errors(tiny, tmp_path):
    data = tiny["fp32"].read_bytes()
    damaged = {"random": np.random.default_rng(0).bytes(4096), "truncated": data[: len(data) // 2], "empty": b"",
               "tflite": b"\x1c\x00\x00\x00TFL3" + bytes(64)}
    for name, content in damaged.items():
        bad = tmp_path / f"{name}.pte"
        bad.write_bytes(content)
        with pytest.raises(InputError, match="truncated" if name == "truncated" else "not an ExecuTorch program"):
            load(bad, 1)
        with pytest.raises(InputError):
            verify_artifact(bad, "executorch", tiny["ref"], tiny["held"])
    # Through the CLI (the harness refuses it before the runtime could abort the process): one line, exit code 2.
    r = run_cli("profile", str(tmp_path / "truncated.pte"), "--target", "host", "--runs", "5", "--no-save")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "truncated.pte is truncated" in r.stderr


def test_wrong_input_shape_is_an_input_error(tiny):
    with pytest.raises(InputError, match="expects input"):
        load(tiny["fp32"], 1)(np.zeros((1, 3, 8, 8), np.float32))


def test_policy_backend_keeps_float_layers_float(tiny, tmp_path):
    from edgekit.quant.executorch_backend import ExecuTorchQuantizer
    from edgekit.quant.policy import FLOAT, INT8_CHANNEL, INT8_TENSOR, Policy

    calib = np.random.default_rng(2).standard_normal((8, *SHAPE[1:]), dtype=np.float32)
    backend = ExecuTorchQuantizer(tiny["model"], tiny["x"], calib)
    assert [la.name for la in backend.layers] == ["stem.0", "pw", "dw", "head"]
    policy = Policy({"stem.0": INT8_CHANNEL, "pw": FLOAT, "dw": INT8_TENSOR, "head": INT8_CHANNEL}, calibration="minmax")
    path = backend.apply(policy, tmp_path / "mixed.pte")
    side = pte.read_sidecar(path)
    dtypes = {o["layer"]: o["dtype"] for o in side["ops"] if o["layer"] in policy.layers}
    assert side["precision"] == "mixed" and dtypes == {"stem.0": "int8", "pw": "float", "dw": "int8", "head": "int8"}
    assert side["delegated_fraction"] == 1.0
    assert load(path, 1)(tiny["x"]).shape == (1, 5)


def test_check_names_what_xnnpack_delegates_and_why_not():
    from edgekit.rules.executorch import model_verdict, supported_ops
    from edgekit.targets import load_target

    target = load_target("rpi4")
    rt = target.runtime_for("pte")
    assert rt.name == "executorch" and rt.sparse_rules == "executorch" and "convolution.default" in supported_ops()
    v = model_verdict(WithFallback().eval(), (1, 3, 8, 8), target, rt)
    by_op = {lv.op: lv for lv in v.layers}
    assert by_op["aten.convolution.default"].delegated and by_op["aten.linear.default"].delegated
    assert not by_op["aten.mean.dim"].delegated and "keepdim=True" in by_op["aten.mean.dim"].delegate_reason
    assert not by_op["aten.cumsum.default"].delegated
    assert "no XNNPACK partitioner config" in by_op["aten.cumsum.default"].delegate_reason
    assert {b["layer"] for b in v.blockers} == {"aten.mean.dim", "aten.cumsum.default"} and not v.sparse
    assert "XNNPACK delegates 3 of 5 operators" in v.summary  # conv, relu, linear; not mean, cumsum


def test_compress_writes_verified_measured_and_profiled_pte(digits_run: Path):
    report = json.loads((digits_run / "report.json").read_text())
    art = next(a for a in report["artifacts"] if a["format"] == "pte")
    assert art["runtime"] == "executorch" and art["verification"]["passed"]
    assert art["executorch"]["delegated_fraction"] == 1.0
    assert art["executorch"]["layer_accuracy"]["probe_vs_artifact_max_abs"] == 0.0
    lat = art["latency"]
    assert lat["source"] == "measured" and lat["runtime"].startswith("executorch") and lat["p50_ms"] > 0
    assert lat["per_layer"] and {r["layer"] for r in lat["per_layer"]} >= {"0", "3", "7", "10", "15"}
    check = next(s for s in report["stages"] if s["name"] == "check")["details"]["findings"]
    assert "XNNPACK delegates" in next(f for f in check if f["runtime"] == "executorch")["summary"]
    titles = [s["title"] for s in report["sections"]]
    assert "ExecuTorch: model_fp32.pte (fp32)" in titles and "Where the time goes (per-operator profile)" in titles
    assert (digits_run / "op_profile.png").is_file() and (digits_run / "artifacts" / "model_fp32.pte.json").is_file()


def test_predictor_learns_executorch_kernels_and_checks_layers(tiny, tmp_path):
    from edgekit.devices import harness
    from edgekit.devices.timing import time_interleaved
    from edgekit.latency.predictor import predictor_from_profile_dicts
    from edgekit.latency.profile import add_entry, new_profile

    # 64x64 inputs: operators long enough for the profiler's 1 us resolution.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 64, 64), dtype=np.float32)
    paths = {"fp32": pte.export(tiny["model"], x, tmp_path / "f.pte"),
             "int8": pte.export(tiny["model"], x, tmp_path / "q.pte", calibration=rng.standard_normal(
                 (4, 3, 64, 64), dtype=np.float32))}
    prof = new_profile("host", "test", harness.device_facts(), "local")
    runners = [load(paths[k], 1) for k in ("fp32", "int8")]
    for key, t in zip(("fp32", "int8"), time_interleaved(runners, x, 2, 20), strict=True):
        ops = per_op_profile(paths[key], x, 1, runs=5, warmup=1)["per_op"]
        add_entry(prof, key, "pte", runners[0].runtime, 1, t.as_dict(), ops, sha256=key)
    predictor = predictor_from_profile_dicts([prof])
    assert predictor.can_predict_ops("executorch", 1) and not predictor.can_predict_ops("litert", 1)
    pred = predictor.predict(paths["int8"], "executorch", 1)
    assert pred["source"] == "predicted" and pred["p50_ms"] >= 0 and pred["kernels_in_table"] == 1.0
    measured = per_op_profile(paths["int8"], x, 1, runs=5, warmup=1)["per_op"]
    assert sum(o["ms"] for o in measured) > 0
    check = predictor.check_layers(paths["int8"], "executorch", 1, measured, p50_ms=0.5)
    assert {"stem.0", "pw", "dw", "head"} <= {r["layer"] for r in check["layers"]} and check["measured_p50_ms"] == 0.5
    # The layers' predictions add up to the whole-model prediction (its correction is spread over them), and the
    # measured operator times are scaled to the measured p50.
    assert sum(r["predicted_ms"] for r in check["layers"]) == pytest.approx(pred["p50_ms"], rel=1e-2, abs=1e-3)
    assert sum(r["measured_ms"] for r in check["layers"]) == pytest.approx(0.5, rel=1e-2)


@pytest.mark.slow
def test_quantize_stage_writes_int8_pte_with_per_layer_accuracy(digits_run: Path, tmp_path: Path):
    """The quant recipe with format pte: the ONNX search's policy applied through the XNNPACK quantizer (slow: each
    candidate is a PT2E export and lowering, plus a debug build per kept program)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(digits_run, out)
    r = run_cli("compress", "--target", "host", "--recipe", "quant", "--out", str(out), "--set",
                "quantize.formats=[onnx,pte]", "--set", "quantize.trials=4", "--set", "quantize.eval_inputs=200",
                "--set", "quantize.max_quality_drop=5", "--set", "quantize.final_runs=30", timeout=1800)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    arts = {a["path"]: a for a in report["artifacts"] if a["format"] == "pte"}
    int8 = arts["artifacts/model_int8.pte"]
    assert int8["precision"] == "int8" and int8["reference"] == "float" and int8["verification"]["passed"]
    assert int8["executorch"]["delegated_fraction"] == 1.0
    acc = int8["executorch"]["layer_accuracy"]
    assert acc["probe_vs_artifact_max_abs"] == 0.0 and acc["output_sqnr_db"] < 80  # quantised, not float
    assert int8["latency"]["source"] == "measured" and int8["latency"]["per_layer"]
    search = next(s for s in report["stages"] if s["name"] == "quantize")["details"]["searches"]
    assert {s["format"] for s in search} == {"onnx", "pte"}
    assert (out / "artifacts" / "quant_policy_pte.json").is_file()
    assert any(s["title"] == "Quantisation: pte (executorch 1.5.1 (xnnpack))" for s in report["sections"])
