"""The one device interface: URI lookup (a registry, no string branches in callers), the latency-source rule every
stage uses, the local device, and the import graph (devices/uri.py and facts.py import no device module)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from edgekit.devices import Device, Job, latency_source, open_device, register_scheme, scheme_of
from edgekit.errors import SettingsError
from edgekit.targets import load_target

PKG = Path(__file__).resolve().parents[1] / "toolkit" / "edgekit"


def test_uri_schemes_and_the_registry():
    assert [scheme_of(u) for u in ("local", "ssh://pi@h", "adb://S1", "node", "chromium", "farm:d.toml",
                                   "farm:/abs/d.toml?labels=a")] == ["local", "ssh", "adb", "node", "chromium",
                                                                     "farm", "farm"]
    with pytest.raises(SettingsError, match="expected local, ssh://"):
        open_device("telnet://board")
    with pytest.raises(SettingsError, match="takes no options"):
        open_device("node?x=1")
    seen = {}

    class Board:  # a plugin's device: registered once, then opened like any other
        def __init__(self, uri, target=None, **options):
            seen.update(uri=uri, target=target, options=options)
            self.uri = uri

    register_scheme("lab", Board)
    dev = open_device("lab://rack-3", target=load_target("rpi4"), timeout=5)
    assert isinstance(dev, Board) and seen["target"].name == "rpi4" and seen["options"] == {"timeout": 5}
    assert scheme_of("lab://rack-3") == "lab"


def test_latency_source_is_one_rule():
    host, rpi4, wasm = (load_target(n) for n in ("host", "rpi4", "wasm"))
    assert latency_source(host, None).local and latency_source(host, None).source == "measured"
    assert latency_source(host, "local").local and latency_source(host, "local").explicit
    s = latency_source(rpi4, None)
    assert s.source == "none" and "no rpi4 device attached" in s.reason and not s.devices
    s = latency_source(rpi4, "ssh://pi@board")
    assert (s.source, s.devices, s.explicit, s.local) == ("measured", ("ssh://pi@board",), True, False)
    s = latency_source(wasm, None)
    assert s.devices == ("node", "chromium") and s.primary == "chromium" and not s.explicit
    assert latency_source(wasm, "farm:d.toml").devices == ("farm:d.toml",)
    # For a search the browser engines are not implicit, and a profile may predict.
    assert latency_source(wasm, None, for_search=True).source in ("predicted", "none")
    assert latency_source(host, None, for_search=True).local
    for target, device, match in ((wasm, "ssh://pi@board", "node, chromium"), (host, "chromium", "browser target"),
                                  (rpi4, "ftp://x", "expected local")):
        with pytest.raises(SettingsError, match=match):
            latency_source(target, device)


def test_local_device_times_side_by_side_and_runs(digits_run: Path):
    from edgekit.data import digits

    arts = digits_run / "artifacts"
    x = digits().x_test[:8].astype(np.float32)
    jobs = [Job(arts / "model_fp32.onnx", "onnxruntime", input=x[:1]), Job(arts / "model_fp32.tflite", "litert",
                                                                            input=x[:1])]
    with open_device("local", target=load_target("host")) as dev:
        assert isinstance(dev, Device) and {"onnxruntime", "litert"} <= set(dev.runtimes())
        lats = dev.time(jobs, runs=20, warmup=2)
        assert [lat.source for lat in lats] == ["measured", "measured"]
        assert all(lat.via == "local" and lat.device.startswith("host: ") and lat.device_id for lat in lats)
        # per-operator times come from the harness in a subprocess, the code a remote device runs
        (prof,) = dev.time(jobs[:1], runs=20, warmup=2, profile_runs=3)
        assert prof.extra["raw"]["per_op"] and prof.extra["raw"]["sha256"]
        y_onnx, y_tfl = dev.run(jobs[0], x), dev.run(jobs[1], x)
        assert y_onnx.shape == (8, 10) and np.abs(y_onnx - y_tfl).max() < 1e-3
    with pytest.raises(SettingsError, match="not be rpi4 latencies"):
        open_device("local", target=load_target("rpi4")).time(jobs, runs=20)


def test_local_timing_goes_on_in_groups_beside_the_first_job_when_memory_is_short(digits_run: Path, monkeypatch):
    """Above TIMING_RSS_MB resident, loaded artifacts are timed and released and the rest are timed in further
    groups, each beside the first job, whose samples every group pools; each latency says which group timed it."""
    import edgekit.devices.local as local
    from edgekit.data import digits

    arts = digits_run / "artifacts"
    x = digits().x_test[:1].astype(np.float32)
    jobs = [Job(arts / "model_fp32.onnx", "onnxruntime", input=x), Job(arts / "model_fp32.tflite", "litert", input=x),
            Job(arts / "model_fp32.onnx", "onnxruntime", input=x, name="again")]
    monkeypatch.setattr(local, "TIMING_RSS_MB", 0)  # every job past the second starts a group
    lats = local.LocalDevice().time(jobs, runs=20, warmup=1)
    assert [lat.source for lat in lats] == ["measured"] * 3
    assert [lat.runs for lat in lats] == [40, 20, 20]
    assert [lat.extra["timing_group"] for lat in lats] == ["all 2", "1 of 2", "2 of 2"]
    monkeypatch.setattr(local, "TIMING_RSS_MB", 10 ** 9)  # one group: nothing to say
    lats = local.LocalDevice().time(jobs, runs=20, warmup=1)
    assert [lat.runs for lat in lats] == [20, 20, 20] and not any("timing_group" in lat.extra for lat in lats)


def test_device_modules_form_no_cycle():
    """devices/uri.py and devices/facts.py (URIs, the honesty check, harness results) import no device module; the
    devices import them, never the other way round. The harness imports nothing of edgekit (it runs on the device);
    no device module reaches for the run (stages, pipeline)."""
    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    devices = ("edgekit.devices.ssh", "edgekit.devices.adb", "edgekit.devices.browser", "edgekit.devices.local",
               "edgekit.devices.farm")
    for name in ("uri.py", "facts.py"):
        assert not {m for m in imports(PKG / "devices" / name) if m.startswith(devices)}, name
    assert not {m for m in imports(PKG / "devices" / "harness.py") if m.startswith("edgekit")}
    for path in (PKG / "devices").glob("*.py"):
        assert not {m for m in imports(path) if m.startswith(("edgekit.stages", "edgekit.pipeline"))}, path.name
    assert not (PKG / "measure").exists()


def test_worker_command_errors(tmp_path: Path):
    bad = tmp_path / "spec.json"
    bad.write_text('{"kind": "something else"}')
    r = run_cli("worker", str(bad))
    assert r.returncode == 2 and "not an edgekit worker spec" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad.write_text('{"kind": "edgekit-study-worker", "factory": "os:system", "args": {}, "plan": {"storage": '
                   '"memory", "name": "x"}, "trials": 1}')
    r = run_cli("worker", str(bad))
    assert r.returncode == 2 and "not an edgekit function" in r.stderr
