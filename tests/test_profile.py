"""Latency profiles (format, merging, provenance), the harness, the predictor and `edgekit profile`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from edgekit.devices import harness
from edgekit.devices.local import run_local_harness
from edgekit.errors import SettingsError
from edgekit.latency.predictor import kernel_features, kernel_key, load_predictor, parse_signature
from edgekit.latency.profile import (
    add_entry,
    device_id_from_facts,
    list_profiles,
    load_profile,
    new_profile,
    save_profile,
)
from edgekit.targets import host_facts

TIMING = {"p50_ms": 2.0, "p90_ms": 2.5, "min_ms": 1.8, "runs": 30}
FACTS = {"hostname": "Rasp Berry", "arch": "aarch64", "cpu": "Cortex-A72", "cores": 4}


def test_profile_entries_merge_and_keep_provenance(tmp_path: Path):
    p = new_profile("rpi4", device_id_from_facts(FACTS, "ssh"), FACTS, "ssh")
    assert p["device_id"] == "rasp-berry-aarch64-via-ssh" and p["edgekit_version"]
    add_entry(p, "a.tflite", "tflite", "litert 2.3.0", 4, TIMING, sha256="aa", via="ssh://pi@rpi:22")
    add_entry(p, "b.onnx", "onnx", "onnxruntime 1.32.0", 4, TIMING,
              [{"name": "conv", "type": "Conv", "ms": 0.5, "signature": "Conv|float[1, 3, 8, 8]->float[1, 4, 8, 8]"}],
              sha256="bb")
    path = save_profile(p, tmp_path)
    assert path == tmp_path / "rpi4" / "rasp-berry-aarch64-via-ssh.json"
    # A later measurement of the same file replaces its entry; other entries on disk stay.
    q = new_profile("rpi4", p["device_id"], FACTS, "ssh")
    add_entry(q, "a.tflite", "tflite", "litert 2.3.0", 4, {**TIMING, "p50_ms": 2.2, "p90_ms": 2.6}, sha256="aa")
    save_profile(q, tmp_path)
    stored = load_profile("rpi4", p["device_id"], tmp_path)
    assert sorted((e["artifact"], e["timing"]["p50_ms"]) for e in stored["entries"]) == [("a.tflite", 2.2),
                                                                                          ("b.onnx", 2.0)]
    assert stored["created"] == p["created"] and stored["device"] == FACTS
    assert all(e["measured_at"] and e["runtime"] for e in stored["entries"])
    assert list_profiles("rpi4", tmp_path) == [path] and not list(tmp_path.rglob("*.tmp"))


def test_profile_rejects_bad_entries_and_emulated_devices(tmp_path: Path):
    p = new_profile("rpi4", "board-aarch64", FACTS, "ssh")
    with pytest.raises(SettingsError, match="min <= p50 <= p90"):
        add_entry(p, "a.onnx", "onnx", "ort", 1, {**TIMING, "min_ms": 3.0})
    with pytest.raises(SettingsError, match="lacks 'runs'"):
        add_entry(p, "a.onnx", "onnx", "ort", 1, {k: v for k, v in TIMING.items() if k != "runs"})
    with pytest.raises(SettingsError, match="must match"):
        new_profile("rpi4", "../escape", FACTS, "ssh")
    emu = new_profile("rpi4", "qemu-aarch64", {**FACTS, "emulated": True}, "local")
    add_entry(emu, "a.onnx", "onnx", "ort", 1, TIMING)
    with pytest.raises(SettingsError, match="emulated"):
        save_profile(emu, tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_signatures_keys_and_features():
    sig = "Conv|float[1, 16, 8, 8],float[32, 16, 3, 3],float[32]->float[1, 32, 8, 8]"
    op, ins, outs = parse_signature(sig)
    assert op == "Conv" and ins[1] == ("float", (32, 16, 3, 3)) and outs == [("float", (1, 32, 8, 8))]
    assert kernel_key(sig) == "Conv|float[1, 16, 8, 8],float[32, 16, 3, 3]->float[1, 32, 8, 8]"
    f = kernel_features(sig)
    assert f[2] == 1 * 32 * 8 * 8 and f[3] == 32 * 8 * 8 * 16 * 9  # output elements, multiply-accumulates
    q = "QLinearConv|uint8[1, 8, 8, 16],float[],uint8[],float[32],int8[32],float[],uint8[]->uint8[1, 8, 8, 32]"
    assert kernel_key(q) == "QLinearConv|uint8[1, 8, 8, 16]->uint8[1, 8, 8, 32]"


def test_harness_json_and_missing_runtime(digits_run: Path, tmp_path: Path):
    tfl = digits_run / "artifacts" / "model_fp32.tflite"
    r = subprocess.run([sys.executable, str(Path(harness.__file__)), str(tfl), "--runs", "5", "--warmup", "1"],
                       capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and out["ok"] and out["format"] == "tflite" and out["per_op"] == []
    assert {"hostname", "arch", "cpu", "cores", "uname", "governor", "emulated"} <= set(out["device"])
    assert {"throttling", "temperature_c", "governor"} <= set(out["conditions"])
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    r = subprocess.run([str(bare / "bin" / "python"), str(Path(harness.__file__)), str(tfl)], capture_output=True,
                       text=True, timeout=60)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 3 and out["kind"] == "missing_runtime" and "pip install ai-edge-litert" in out["install"]


def test_predictor_from_a_measured_profile(digits_run: Path, tmp_path: Path):
    """Real measurements of the float and an INT8 digits CNN -> a predictor that labels its figures predicted."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    from edgekit.commands._validate import _Calibration

    fp32 = digits_run / "artifacts" / "model_fp32.onnx"
    int8 = tmp_path / "model_int8.onnx"

    class Reader(_Calibration):
        pass

    quantize_static(str(fp32), str(int8), Reader("input", (1, 1, 8, 8)), quant_format=QuantFormat.QDQ)
    results = run_local_harness([fp32, int8], "onnxruntime", 1, 20, 2, profile_runs=5)
    p = new_profile("host", device_id_from_facts(results[0]["device"]), results[0]["device"], "local")
    for r in results:
        assert r["per_op"], "ONNX Runtime per-operator timings missing"
        add_entry(p, r["artifact"], "onnx", r["runtime"], 1, r["timing"], r["per_op"], sha256=r["sha256"])
    save_profile(p, tmp_path / "profiles")
    assert load_predictor("rpi4", root=tmp_path / "profiles") is None
    pred = load_predictor("host", root=tmp_path / "profiles")
    out = pred.predict(int8, "onnxruntime", 1)
    assert out["source"] == "predicted" and out["p50_ms"] > 0 and out["error_pct"] >= 0
    assert out["kernels_in_table"] == 1.0 and "fit" in out["error_basis"]
    tfl = digits_run / "artifacts" / "model_fp32.tflite"
    assert pred.can_predict(int8, "onnxruntime", 1) and not pred.can_predict(tfl, "litert", 1)
    with pytest.raises(Exception, match="edgekit profile"):
        pred.predict(tfl, "litert", 1)


def test_validate_small(digits_run: Path, tmp_path: Path):
    """The validation loop end to end on the tiny digits CNN (the mobilenet_v2 run is `edgekit profile --validate`)."""
    from edgekit.commands._validate import validate_host

    res = validate_host(variants=3, train=2, runs=20, warmup=2, profile_runs=3,
                        model=digits_run / "artifacts" / "model_fp32.onnx", profiles_root=tmp_path,
                        log=lambda m: None)
    s = res["summary"]
    assert s["variants"] == 3 and 0 <= s["within_10pct_fraction"] <= 1 and s["median_abs_err_pct"] >= 0
    assert len(res["rows"]) == 3 and all(r["predicted_p50_ms"] > 0 and r["measured_p50_ms"] > 0 for r in res["rows"])
    path = next(tmp_path.rglob("*.json"))
    stored = json.loads(path.read_text())
    # float, INT8 and 2 policies (a policy of this 3-layer model can equal another one: same file, one entry)
    assert stored["validation"]["variants"] == 3 and 2 <= len(stored["entries"]) <= 4
    assert {"model_fp32_float.onnx", "model_fp32_int8.onnx"} <= {e["artifact"] for e in stored["entries"]}
    assert {e["extra"]["purpose"] for e in stored["entries"]} == {"validate-train"}
    # A later plain measurement into the same profile keeps the validation summary.
    later = new_profile("host", stored["device_id"], stored["device"], "local")
    add_entry(later, "other.onnx", "onnx", "onnxruntime 1.32.0", 1, TIMING, sha256="cc")
    save_profile(later, tmp_path)
    again = json.loads(path.read_text())
    assert again["validation"] == stored["validation"] and len(again["entries"]) == len(stored["entries"]) + 1


def test_profile_command_errors(digits_run: Path):
    art = str(digits_run / "artifacts" / "model_fp32.onnx")
    cases = [(["profile"], "needs one or more artifact"),
             (["profile", "--validate", "--target", "rpi4"], "--validate runs on this machine"),
             (["profile", art, "--device", "telnet://x"], "expected local")]
    if host_facts()["arch"] != "aarch64":  # this machine is not a Raspberry Pi: its timings are not rpi4 latencies
        cases.append((["profile", art, "--target", "rpi4", "--device", "local", "--no-save"], "not be rpi4"))
    for args, match in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_profile_command_local(digits_run: Path):
    art = digits_run / "artifacts" / "model_fp32.onnx"
    r = run_cli("profile", str(art), "--threads", "1", "--runs", "10", "--no-save")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["source"] == "measured" and out["via"] == "local" and not out["device_id"].endswith("-via-ssh")
