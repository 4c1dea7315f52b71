"""The SSH device runner against a real sshd on 127.0.0.1 (key authentication, its own host key, a temporary folder
as the device's working directory), with real TFLite and ONNX artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_cli
from edgekit.devices import Job, open_device
from edgekit.devices.ssh import DeviceError, DeviceUnreachable, HostKeyError, SSHDevice, measure_over_ssh
from edgekit.devices.uri import SSHTarget, parse_device_uri
from edgekit.errors import RuntimeUnavailable, SettingsError
from edgekit.fileio import sha256_file
from edgekit.targets import host_facts, load_target
from loopback import Missing, free_port, keygen, start_sshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on a free loopback port (tests/loopback.py); yields paths and an SSHTarget template."""
    d = tmp_path_factory.mktemp("sshd")
    try:
        keygen(d / "client_key")
        keygen(d / "other_key")
        dev = start_sshd(d, "device", d / "client_key")
    except Missing as e:
        pytest.skip(str(e))
    shutil.copy(dev.known_hosts, d / "known_hosts")
    target = SSHTarget(host="127.0.0.1", user=dev.user, port=dev.port, identity=str(d / "client_key"),
                       known_hosts=str(d / "known_hosts"), python=sys.executable, timeout=300)
    yield SimpleNamespace(dir=d, home=dev.home, port=dev.port, target=target, user=dev.user)
    dev.stop()


def _uri(s, **opts: str) -> str:
    o = {"identity": str(s.dir / "client_key"), "known_hosts": str(s.dir / "known_hosts"), "python": sys.executable,
         **opts}
    return f"ssh://{s.user}@127.0.0.1:{s.port}?" + "&".join(f"{k}={v}" for k, v in o.items())


def test_tflite_and_onnx_through_ssh(sshd, digits_run: Path):
    arts = digits_run / "artifacts"
    for name, runtime in (("model_fp32.tflite", "litert"), ("model_fp32.onnx", "onnxruntime")):
        res = measure_over_ssh(sshd.target, arts / name, threads=1, runs=20, warmup=2, profile_runs=3)
        assert res["ok"] and res["runtime"].startswith(runtime)
        t = res["timing"]
        assert 0 < t["min_ms"] <= t["p50_ms"] <= t["p90_ms"] and t["runs"] == 20
        assert res["sha256"] == sha256_file(arts / name), "the device ran a different file"
        assert res["device"]["hostname"] == host_facts()["hostname"] and not res["device"]["emulated"]
        assert res["via"] == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
        if runtime == "onnxruntime":
            assert res["per_op"] and all(op["ms"] >= 0 and "|" in op["signature"] for op in res["per_op"])
            assert {"Conv", "Gemm"} & {op["type"] for op in res["per_op"]}
    assert not list(sshd.home.glob("edgekit.*")), "the device's temporary folder was not cleaned up"


def test_profile_command_over_ssh(sshd, digits_run: Path):
    art = digits_run / "artifacts" / "model_fp32.onnx"
    r = run_cli("profile", str(art), "--target", "host", "--device", _uri(sshd), "--runs", "10", "--threads", "1",
                "--no-save")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["source"] == "measured" and out["device_id"].endswith("-via-ssh")
    assert out["artifacts"][0]["runtime"].startswith("onnxruntime") and out["profile"] is None
    # Device facts need no runtime: the harness is streamed to the device's Python.
    with SSHDevice(_uri(sshd, python="python3")) as dev:
        facts = dev.facts()
    assert facts["hostname"] == host_facts()["hostname"] and facts["cores"] >= 1


def test_ssh_device_times_side_by_side_and_checks_the_target(sshd, digits_run: Path):
    arts = digits_run / "artifacts"
    jobs = [Job(arts / "model_fp32.onnx", "onnxruntime"), Job(arts / "model_fp32.tflite", "litert"),
            Job(arts / "model_fp32.onnx", "tvm")]
    with open_device(_uri(sshd), target=load_target("host")) as dev:
        onnx, tfl, tvm = dev.time(jobs, runs=20, warmup=2)
        for lat, runtime in ((onnx, "onnxruntime"), (tfl, "litert")):
            assert lat.source == "measured" and lat.via == dev.uri and lat.p50_ms > 0
            assert lat.runtime.startswith(runtime) and lat.device_id.endswith("-via-ssh")
            assert lat.device_facts["hostname"] == host_facts()["hostname"]
            assert lat.extra["raw"]["sha256"] == sha256_file(jobs[0 if runtime == "onnxruntime" else 1].path)
        assert tvm.source == "none" and "not tvm" in tvm.reason
        # The device computes what this machine computes (the same file in the same runtime).
        from edgekit.data import digits

        x = digits().x_test[:16].astype("float32")
        from edgekit.runtimes import load_runner, run_all

        here = run_all(load_runner("onnxruntime", jobs[0].path), x)
        np.testing.assert_allclose(dev.run(jobs[0], x), here.reshape(len(x), -1), atol=1e-5)
        # ExecuTorch's ETDump travels back raw and is decoded here onto the program's layers.
        (pte,) = dev.time([Job(arts / "model_fp32.pte", "executorch")], runs=20, warmup=2, profile_runs=5)
        assert pte.source == "measured" and pte.extra["per_op_mapped"]
        assert {r["layer"] for r in pte.extra["per_layer"]} >= {"0", "3", "7", "10", "15"}
    # A loopback machine is not a Raspberry Pi: its timings are refused as rpi4 latencies.
    with pytest.raises(SettingsError, match="not be rpi4 latencies"):
        open_device(_uri(sshd), target=load_target("rpi4")).time(jobs[:1], runs=20, warmup=2)
    assert not list(sshd.home.glob("edgekit.*"))


def test_missing_runtime_on_device_names_the_install_command(sshd, digits_run: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    t = SSHTarget(**{**sshd.target.__dict__, "python": str(bare / "bin" / "python")})
    for name, pip in (("model_fp32.tflite", "ai-edge-litert"), ("model_fp32.onnx", "onnxruntime"),
                      ("model_fp32.pte", "executorch==1.5.1")):
        with pytest.raises(RuntimeUnavailable, match=f"pip install {pip}"):
            measure_over_ssh(t, digits_run / "artifacts" / name, runs=5, warmup=1)
    with pytest.raises(RuntimeUnavailable, match="not found on the device"):
        measure_over_ssh(SSHTarget(**{**sshd.target.__dict__, "python": "/no/such/python3"}),
                         digits_run / "artifacts" / "model_fp32.onnx", runs=5, warmup=1)
    assert not list(sshd.home.glob("edgekit.*"))


def test_unreachable_host_is_one_clear_error(sshd, digits_run: Path):
    closed = SSHTarget(**{**sshd.target.__dict__, "port": free_port(), "connect_timeout": 5})
    with pytest.raises(DeviceUnreachable, match="unreachable .connection refused"):
        measure_over_ssh(closed, digits_run / "artifacts" / "model_fp32.onnx", runs=5)
    r = run_cli("profile", str(digits_run / "artifacts" / "model_fp32.onnx"), "--device",
                f"ssh://{sshd.user}@127.0.0.1:{closed.port}", "--known-hosts", str(sshd.dir / "known_hosts"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unreachable" in r.stderr


def test_wrong_and_unknown_host_keys_are_refused(sshd, digits_run: Path, tmp_path: Path):
    art = digits_run / "artifacts" / "model_fp32.onnx"
    wrong = tmp_path / "wrong_known_hosts"
    other = " ".join((sshd.dir / "other_key.pub").read_text().split()[:2])
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    with pytest.raises(HostKeyError, match="wrong host key"):
        measure_over_ssh(SSHTarget(**{**sshd.target.__dict__, "known_hosts": str(wrong)}), art, runs=5)
    # accept-new never replaces a changed key.
    with pytest.raises(HostKeyError, match="wrong host key"):
        measure_over_ssh(SSHTarget(**{**sshd.target.__dict__, "known_hosts": str(wrong), "accept_new": True}), art,
                         runs=5)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError, match="not in known_hosts"):
        measure_over_ssh(SSHTarget(**{**sshd.target.__dict__, "known_hosts": str(empty)}), art, runs=5)
    assert empty.read_text() == "", "an unknown key was added without --accept-new-host-key"
    res = measure_over_ssh(SSHTarget(**{**sshd.target.__dict__, "known_hosts": str(empty), "accept_new": True}), art,
                           runs=5, profile_runs=0)
    assert res["ok"] and empty.read_text().strip(), "accept-new did not record the host key"


def test_remote_arguments_are_never_shell_parsed(sshd, digits_run: Path, tmp_path: Path):
    pwned = tmp_path / "pwned"
    evil = SSHTarget(**{**sshd.target.__dict__, "python": f"python3; touch {pwned}"})
    with pytest.raises((RuntimeUnavailable, DeviceError)):
        measure_over_ssh(evil, digits_run / "artifacts" / "model_fp32.onnx", runs=5)
    odd = tmp_path / "a b; touch $HOME.onnx"
    shutil.copy(digits_run / "artifacts" / "model_fp32.onnx", odd)
    res = measure_over_ssh(sshd.target, odd, runs=5, profile_runs=0)
    assert res["ok"] and res["artifact"] == odd.name
    assert not pwned.exists()


@pytest.mark.parametrize("uri, match", [
    ("ssh://", "expected local"), ("ftp://host", "expected local"), ("ssh://u@h:99999", "port"),
    ("ssh://-oProxyCommand=x", "expected local"), ("ssh://u@h?evil=1", "unknown options"),
    ("ssh://u@h/some/path", "expected local"),
])
def test_bad_device_uris(uri: str, match: str):
    with pytest.raises(SettingsError, match=match):
        parse_device_uri(uri)


def test_device_uri_forms():
    u = parse_device_uri("ssh://pi@raspberrypi:2222?python=/opt/venv/bin/python3&accept_new=1")
    t = u.ssh_target()
    assert (u.scheme, t.user, t.host, t.port, t.python, t.accept_new) == (
        "ssh", "pi", "raspberrypi", 2222, "/opt/venv/bin/python3", True)
    assert u.display == "ssh://pi@raspberrypi:2222"
    assert parse_device_uri("ssh://board").ssh_target().port == 22
    assert not parse_device_uri("ssh://board").ssh_target().accept_new
    assert "StrictHostKeyChecking=yes" in parse_device_uri("ssh://board").ssh_target().base_args()
    assert parse_device_uri("local").scheme == "local"
    assert parse_device_uri("adb://emulator-5554").serial == "emulator-5554"
