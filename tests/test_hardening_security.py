"""Issue 16, security: untrusted model files, generated scripts, artifact names, log parsing, the local result server
and what report.json keeps of a device URI."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import one_line_error, run_cli
from edgekit.errors import EdgekitError, InputError, SettingsError


class _Payload:
    """Unpickling this object creates `path` (a stand-in for any code an attacker would run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tiny_pt2(path: Path) -> Path:
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), path)
    return path


def _rewrite(src: Path, dest: Path, edit) -> Path:
    """Copies the zip `src` to `dest`, passing every (name, bytes) through edit(name, data) -> bytes | None."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
    return dest


def _torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _pickled_bias(src: Path, dest: Path, payload: bytes) -> Path:
    """The .pt2 whose bias entry says use_pickle and holds `payload` (what issue 16 reproduced)."""

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["1.bias"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_1"):
            return payload
        return data

    return _rewrite(src, dest, edit)


def _evil_sample_inputs(src: Path, dest: Path, payload: bytes) -> Path:
    """torch falls back to weights_only=False when the sample inputs do not load with weights_only=True."""
    return _rewrite(src, dest, lambda name, data: payload if "sample_inputs/" in name else data)


def _opaque_constant(src: Path, dest: Path, payload: bytes) -> Path:
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_constants_config.json"):
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                                "tensor_meta": None}}}).encode()
        return data

    out = _rewrite(src, dest, edit)
    root = zipfile.ZipFile(src).namelist()[0].split("/")[0]
    with zipfile.ZipFile(out, "a") as z:
        z.writestr(f"{root}/data/constants/opaque_obj_0", payload)
    return out


def _legacy_fallback(src: Path, dest: Path, payload: bytes) -> Path:
    """Top-level entries of the pre-2.8 layout: torch's fallback reader unpickles serialized_state_dict.pt."""
    program = next(zipfile.ZipFile(src).read(n) for n in zipfile.ZipFile(src).namelist() if "models/" in n)
    out = _rewrite(src, dest, lambda name, data: data if not name.endswith("archive_version") else None)
    with zipfile.ZipFile(out, "a") as z:
        z.writestr("version", "8.0")
        z.writestr("serialized_exported_program.json", program)
        z.writestr("serialized_state_dict.pt", payload)
        z.writestr("serialized_constants.pt", _torch_bytes({}))
        z.writestr("serialized_example_inputs.pt", _torch_bytes(((), {})))
    return out


@pytest.mark.parametrize("make", [_pickled_bias, _evil_sample_inputs, _opaque_constant, _legacy_fallback])
def test_pt2_with_pickled_entries_never_runs_them(tmp_path: Path, make):
    import pickle

    from edgekit.zoo import load_model

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker))) if make is _opaque_constant else _torch_bytes(_Payload(str(marker)))
    evil = make(_tiny_pt2(tmp_path / "ok.pt2"), tmp_path / "evil.pt2", payload)
    with pytest.raises(InputError, match="--trust-model-code"):
        load_model(str(evil))
    assert not marker.exists()


def test_pt2_refusal_is_one_line_and_trusted_files_still_load(tmp_path: Path):
    import torch

    from edgekit.zoo import load_model

    marker = tmp_path / "pwned"
    ok = _tiny_pt2(tmp_path / "ok.pt2")
    evil = _pickled_bias(ok, tmp_path / "evil.pt2", _torch_bytes(_Payload(str(marker))))
    r = run_cli("compress", str(evil), "--out", str(tmp_path / "run"))
    one_line_error(r, "evil.pt2", "--trust-model-code")
    assert not marker.exists() and not (tmp_path / "run").exists()
    # A plain torch.export file loads without the flag; a pickled (but harmless) entry loads with it.
    assert load_model(str(ok)).input_shape == (1, 1, 8, 8)
    benign = _pickled_bias(ok, tmp_path / "benign.pt2", _torch_bytes(torch.nn.Parameter(torch.zeros(10))))
    with pytest.raises(InputError):
        load_model(str(benign))
    assert load_model(str(benign), trust_code=True).input_shape == (1, 1, 8, 8)


def test_module_factory_needs_the_opt_in_flag(tmp_path: Path):
    import typer

    from edgekit import cli

    r = run_cli("compress", "torch.nn:Identity", "--out", str(tmp_path / "run"))
    one_line_error(r, "--trust-model-code")
    r = run_cli("compress", "torch.nn:Identity", "--trust-model-code", "--out", str(tmp_path / "run"))
    one_line_error(r, "--input-shape")  # it got as far as running the factory
    cli._register_commands()
    commands = typer.main.get_command(cli.app).commands
    for name in ("compress", "check", "prune", "quantize", "adapt", "decompose"):
        params = {o: p for p in commands[name].params for o in getattr(p, "opts", [])}
        assert "run Python code" in params["--trust-model-code"].help, name
        model = next(p for p in commands[name].params if p.name == "model")
        assert "--trust-model-code" in model.help and "runs" in model.help, name


# --- 2: the Android harness script ---------------------------------------------------------------------------------

def test_harness_script_rejects_names_that_break_out_of_a_line(tmp_path: Path):
    from edgekit.devices.android_harness import harness_script
    from edgekit.targets import load_target

    tgt = load_target("android-arm64")
    for name in ("m.tflite", "it's $(touch PWNED) `x`.tflite"):
        (tmp_path / name).write_bytes(b"TFL3")
    for bad in (dict(model=tmp_path / "a\ntouch PWNED\n.tflite"), dict(log="x.log\ntouch PWNED"),
                dict(binary="bm\rtouch PWNED"), dict(serial="R5\ntouch PWNED")):
        kw = {"model": tmp_path / "m.tflite", **bad}
        with pytest.raises(InputError):
            harness_script(kw.pop("model"), tgt, 4, 50, 5, **kw)
    # Printable but hostile names stay inside their quotes: same lines, and the shell parses the script.
    plain = harness_script(tmp_path / "m.tflite", tgt, 4, 50, 5)
    odd = harness_script(tmp_path / "it's $(touch PWNED) `x`.tflite", tgt, 4, 50, 5, log="l g$(x).log")
    assert len(odd.splitlines()) == len(plain.splitlines())
    assert subprocess.run(["sh", "-n"], input=odd, text=True).returncode == 0
    evil = tmp_path / "a\ntouch PWNED\n.tflite"
    evil.write_bytes(b"TFL3")
    one_line_error(run_cli("android-harness", str(evil), cwd=tmp_path))
    assert not (tmp_path / "PWNED").exists()


# --- 3: artifact names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["export", "sparsify"])
@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil", "a/b", "..", ".", "", "x\ny", "a\\b"])
def test_artifact_names_are_plain_file_names(stage: str, name: str):
    from edgekit import stages

    module = stages.get(stage)
    with pytest.raises(SettingsError, match="name"):
        stages.settings_from_dict(module.Settings, {"name": name}, f"stage {stage}")
    assert stages.settings_from_dict(module.Settings, {"name": "my-model_v2.1"}).name == "my-model_v2.1"


def test_artifact_name_outside_the_run_folder_is_refused_on_the_command_line(tmp_path: Path):
    r = run_cli("compress", "--set", "export.name=../../escaped", "--out", str(tmp_path / "a" / "run"))
    one_line_error(r, "export", "name")
    assert not list(tmp_path.rglob("escaped*"))


# --- 4: the benchmark-log parser -----------------------------------------------------------------------------------

_PREFIXES = ["11-25 13:02:11.123  4312  4330 I ", "I/", "INFO: ", "Inference timings in us: ", "count=",
             "=== edgekit: ", "[a]: [", "Initialized session in ", "Timings (microseconds): ", "Memory footprint ",
             "=== Run Order ===\n\t[node type]\t[start]\t[first]\t[avg ms]\t[%]\t[cdf%]\t[mem KB]\t[times called]\n",
             "=== Run Order ===\n[node type]  [first]  [avg ms]  [%]  [cdf%]  [mem KB]  [times called]  [Name]\n",
             "Operator-wise Profiling Info for Regular Benchmark Runs:\n============ Run Order ============\n"
             "[node type]  [first]  [avg ms]  [%]  [cdf%]  [mem KB]  [times called]  [Name]\n"]
_BODIES = [" " * 5000 + "x", "\t" * 5000 + "x", "a" * 5000, "1 " * 2500 + "x", "a=" * 2500, "a: " * 1700,
           ": " * 2500, "] " * 2500 + "x", "1.0 " * 1250 + "x", "1.0  " * 1000 + "1%  " * 250 + "x", "( " * 2500,
           "x" + " " * 2500 + "1 " * 1000 + " " * 1000 + "y", "=== " * 1250 + "x", "e1 " * 1700, "-1." * 1700]


def test_benchmark_log_parser_is_linear_on_adversarial_lines():
    from edgekit.devices.android_harness import profile_from_harness_log, split_sections
    from edgekit.devices.benchmark_log import parse_benchmark_output

    worst = (0.0, "")
    for prefix in _PREFIXES:
        for body in _BODIES:
            text = prefix + body + "\n" + prefix + body
            start = time.perf_counter()
            for parse in (parse_benchmark_output, split_sections,
                          lambda t: profile_from_harness_log(t, "android-arm64")):
                try:
                    parse(text)
                except EdgekitError:
                    pass
            worst = max(worst, (time.perf_counter() - start, repr((prefix[:20], body[:12]))))
    # Main took ~20-30 s on the worst of these; a linear parser takes milliseconds. 1 s is far from both.
    assert worst[0] < 1.0, worst


def test_benchmark_log_parser_still_reads_wide_real_lines():
    from edgekit.devices.benchmark_log import parse_benchmark_output

    text = ("11-25 13:02:11.123  4312  4330 I tflite  : count=50 first=100 curr=90 min=80 max=120 avg=95.5 std=3\n"
            "I/tflite  ( 4312): Inference timings in us: Init: 1000, First inference: 2000, Warmup (avg): 1500, "
            "Inference (avg): 95.5\n")
    r = parse_benchmark_output(text)
    assert r["steady"]["avg_us"] == 95.5 and r["init_ms"] == 1.0 and r["first_inference_ms"] == 2.0


# --- 5: the local result server and Chromium's process group -------------------------------------------------------

def _post(url: str, body: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_result_server_takes_results_only_with_the_run_token(tmp_path: Path):
    import threading

    from edgekit.devices._web_server import RESULT_PATH, PageServer

    server = PageServer(tmp_path, b"")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server.token and len(server.token) >= 16 and server.token not in RESULT_PATH
        assert _post(server.url + RESULT_PATH, b'{"samples_ms": [1]}') == 403
        assert _post(server.url + RESULT_PATH + "/wrong-token", b'{"samples_ms": [1]}') == 403
        assert server.result is None and not server.done.is_set()
        assert _post(server.url + server.result_path, b'{"samples_ms": [2]}') == 204
        assert server.result == {"samples_ms": [2]} and server.done.is_set()
        other = PageServer(tmp_path, b"")
        assert other.token != server.token
        other.server_close()
    finally:
        server.shutdown()
        server.server_close()


def _fake_chromium(tmp_path: Path) -> Path:
    """A 'browser' that starts a child process (as Chromium starts renderers) and never posts a result."""
    script = tmp_path / "fake-chromium"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho \"$$ $!\" > {shlex.quote(str(tmp_path / 'pids'))}\nwait\n")
    script.chmod(0o755)
    return script


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _wait_gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_chromium_runs_in_its_own_process_group_and_all_of_it_is_stopped(tmp_path: Path):
    from edgekit.devices._web_server import run_page

    page = run_page(str(_fake_chromium(tmp_path)), tmp_path, "", np.zeros(1, np.float32), timeout=1.5)
    assert not page.finished
    browser, child = map(int, (tmp_path / "pids").read_text().split())
    assert _wait_gone([browser, child]), "the browser's child process outlived the page run"


def test_a_killed_edgekit_leaves_no_chromium_behind(tmp_path: Path):
    code = ("import sys, numpy as np; from pathlib import Path; from edgekit import cli; cli.install_signal_handlers();"
            "from edgekit.devices._web_server import run_page;"
            f"run_page({str(_fake_chromium(tmp_path))!r}, Path({str(tmp_path)!r}), '', np.zeros(1, np.float32), 600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pids = tmp_path / "pids"
    deadline = time.monotonic() + 120
    while not pids.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert pids.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no browser started"
    browser, child = map(int, pids.read_text().split())
    assert os.getpgid(browser) != os.getpgid(proc.pid)  # its own group: the terminal's signals do not reach it
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert _wait_gone([browser, child]), "Chromium kept running after edgekit was killed"


# --- 6: what report.json keeps of a device URI ---------------------------------------------------------------------

def test_report_keeps_only_user_and_host_of_the_device():
    """(report.json of a real run: tests/test_hardening_run.py::test_report_stores_host_and_user_only)"""
    from edgekit.devices.uri import device_for_report

    uri = "ssh://pi@raspberrypi:2222?identity=/home/me/.ssh/secret_key&known_hosts=/home/me/kh&python=/opt/py"
    assert device_for_report(uri) == "ssh://pi@raspberrypi:2222"
    assert device_for_report("adb://R58M123?tool=apk") == "adb://R58M123"
    assert device_for_report("chromium") == "chromium" and device_for_report(None) is None
    with pytest.raises(SettingsError):
        device_for_report("ssh://host?timeout=abc")
