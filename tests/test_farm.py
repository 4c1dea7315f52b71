"""A device farm of three real sshd "devices" on 127.0.0.1 (one slowed, one that dies mid-run): devices.toml, the
queue (spreading, retries on another device, per-device provenance), leases between processes, `edgekit farm
status`, and the measure stage on a farm. Timings are real; nothing here asserts one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_cli
from edgekit.devices import Job, latency_source, open_device
from edgekit.devices.farmfile import load_farm
from edgekit.devices.lease import Leases
from edgekit.errors import EdgekitError, SettingsError
from edgekit.report import Artifact
from edgekit.targets import host_facts, load_target
from loopback import Missing, dying_python, farm_toml, keygen, slow_python, start_sshd


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    """fast, slow (starts late, lowest priority) and doomed (dies on its 3rd run) loopback devices."""
    root = tmp_path_factory.mktemp("farm")
    try:
        keygen(root / "client_key")
        fast = start_sshd(root, "fast", root / "client_key")
        slow = start_sshd(root, "slow", root / "client_key")
        doomed = start_sshd(root, "doomed", root / "client_key")
    except Missing as e:
        pytest.skip(str(e))
    slow.python = slow_python(slow.dir / "python", 1.0)
    doomed.python = dying_python(doomed.dir / "python", after=3)
    toml = farm_toml(root / "devices.toml", [(d.name, d.uri(), "host") for d in (fast, slow, doomed)],
                     timeout_s=120, retries=2, recheck_s=3600, lock_dir=str(root / "locks"))
    yield SimpleNamespace(root=root, fast=fast, slow=slow, doomed=doomed, toml=toml)
    for d in (fast, slow, doomed):
        d.stop()


def test_farm_file_is_checked_in_one_place(tmp_path: Path):
    good = '[[device]]\nname = "pi-1"\nuri = "ssh://pi@pi-1"\ntarget = "rpi4"\nlabels = ["a"]\n'
    cases = [("[[device]]\nname = 'x'\n", "'uri' is required"),
             (good + '[[device]]\nname = "pi-1"\nuri = "ssh://pi@pi-2"\ntarget = "rpi4"\n', "unique"),
             (good.replace("ssh://pi@pi-1", "telnet://x"), "device URI"),
             (good.replace("ssh://pi@pi-1", "farm:other.toml"), "device URI"),
             (good.replace("rpi4", "rpi5"), "unknown target"),
             (good + "concurrency = 0\n", "concurrency"),
             (good.replace('name = "pi-1"', 'name = "Pi 1"'), "name must match"),
             ("[farm]\ntimeout = 3\n" + good, "unknown [farm] keys"),
             (good + "colour = 'red'\n", "unknown keys"),
             ("[[device]\n", "not valid TOML")]
    for text, match in cases:
        f = tmp_path / "devices.toml"
        f.write_text(text)
        with pytest.raises(EdgekitError, match=match.replace("[", r"\[")):
            load_farm(f)
    f.write_text(good)
    spec = load_farm(f)
    assert spec.select("rpi4", ("a",)) and not spec.select("rpi4", ("b",)) and not spec.select("host")
    with pytest.raises(SettingsError, match="no device for target host"):
        open_device(f"farm:{f}", target=load_target("host"))
    r = run_cli("farm", "status", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot read" in r.stderr


def test_queue_spreads_retries_and_records_provenance(devices, digits_run: Path):
    """Twelve measurements on three devices; the doomed one dies mid-run: every measurement is still measured, on a
    device that names itself, and the dead one is taken out."""
    arts = digits_run / "artifacts"
    farm = open_device(f"farm:{devices.toml}", target=load_target("host"))
    groups = [[Job(arts / "model_fp32.onnx", "onnxruntime"), Job(arts / "model_fp32.tflite", "litert")]
              for _ in range(12)]
    results = farm.map(groups, runs=10, warmup=1)
    assert len(results) == 12 and farm.stats.asked == 12
    lost = [i for i, lats in enumerate(results) if any(lat.source != "measured" for lat in lats)]
    assert not lost, [results[i][0].reason for i in lost]
    assert farm.stats.measured == 12 and farm.stats.failed == 0 and farm.stats.retried >= 1
    assert not devices.doomed.alive and farm.health["doomed"].down_until > 0
    assert "unreachable" in farm.health["doomed"].last_error or "closed" in farm.health["doomed"].last_error
    ports = {d.name: d.port for d in (devices.fast, devices.slow, devices.doomed)}
    for lats in results:
        onnx, tfl = lats
        f = onnx.extra["farm"]
        assert tfl.extra["farm"]["device"] == f["device"], "one measurement's artifacts ran on one device"
        assert onnx.via == f"ssh://{devices.fast.user}@127.0.0.1:{ports[f['device']]}"
        assert onnx.device_facts["hostname"] == host_facts()["hostname"] and onnx.device_id.endswith("-via-ssh")
        assert onnx.runtime.startswith("onnxruntime") and tfl.runtime.startswith("litert")
        assert f["attempts"] == len(f["failed_on"]) + 1 and "doomed" not in f["failed_on"][1:]
    assert sum(farm.stats.by_device.values()) == 12 and farm.stats.by_device["doomed"] <= 2
    retried = [lats[0].extra["farm"] for lats in results if lats[0].extra["farm"]["failed_on"]]
    assert retried and all(r["failed_on"] == ["doomed"] and r["device"] != "doomed" for r in retried)
    # The next call starts without the dead device; a farm whose every device is down records, never loses.
    again = farm.time([Job(arts / "model_fp32.onnx", "onnxruntime")], runs=10, warmup=1)
    assert again[0].source == "measured" and again[0].extra["farm"]["device"] != "doomed"
    for m in farm.members:
        farm.health[m.name].down_until = float("inf")
    (gone,) = farm.time([Job(arts / "model_fp32.onnx", "onnxruntime")], runs=10)
    assert gone.source == "none" and "no device of the farm is up" in gone.reason


def test_a_device_without_the_runtime_passes_the_measurement_on(devices, digits_run: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    toml = farm_toml(tmp_path / "devices.toml", [("bare", devices.fast.uri(python=str(bare / "bin" / "python")),
                                                  "host"), ("fast", devices.fast.uri(), "host")],
                     lock_dir=str(tmp_path / "locks"))
    farm = open_device(f"farm:{toml}", target=load_target("host"))
    for _ in range(2):
        (lat,) = farm.time([Job(digits_run / "artifacts" / "model_fp32.onnx", "onnxruntime")], runs=10, warmup=1)
        assert lat.source == "measured" and lat.extra["farm"]["device"] == "fast"
    assert farm.health["bare"].down_until == 0, "a missing runtime does not take a device out"
    if farm.health["bare"].last_error:
        assert "pip install" in farm.health["bare"].last_error
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert farm.run(Job(digits_run / "artifacts" / "model_fp32.onnx", "onnxruntime"), x).shape == (2, 10)


def test_farm_status_shows_facts_and_health(devices):
    r = run_cli("farm", "status", str(devices.toml), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {row["name"]: row for row in out["devices"]}
    assert rows["fast"]["health"] == "up" and rows["fast"]["fits_target"]
    assert rows["fast"]["facts"]["hostname"] == host_facts()["hostname"]
    assert {"onnxruntime", "litert"} <= set(rows["fast"]["runtimes"]) and rows["fast"]["busy_slots"] == 0
    assert rows["slow"]["health"] == "up"
    if not devices.doomed.alive:  # killed by the queue test; alone, this test sees it up
        assert rows["doomed"]["health"] == "down" and "unreachable" in rows["doomed"]["error"]
    assert out["total"] == 3 and out["up"] >= 2
    # A loopback device is this machine, not a Raspberry Pi: a farm file that says so gets "misfit".
    rpi = farm_toml(devices.root / "rpi.toml", [("fast", devices.fast.uri(), "rpi4")])
    bad = json.loads(run_cli("farm", "status", str(rpi), "--json").stdout)["devices"][0]
    assert bad["health"] == "misfit" and "not be rpi4 latencies" in bad["error"]


def test_leases_keep_processes_off_a_busy_slot(tmp_path: Path):
    leases = Leases(tmp_path)
    held = leases.try_acquire("ssh://pi@board:22?identity=k", 0)
    assert held is not None and leases.busy("ssh://pi@board:22", 1) == 1
    probe = ("import sys; from edgekit.devices.lease import Leases; "
             f"print(Leases({str(tmp_path)!r}).try_acquire('ssh://pi@board:22', 0) is None)")
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "True", other.stderr  # another process cannot take it
    held.release()
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "False"


def test_measure_stage_on_a_farm_writes_provenance(devices, digits_run: Path, tmp_path: Path):
    import shutil

    from edgekit.stages import measure

    out = tmp_path / "run"
    shutil.copytree(digits_run / "artifacts", out / "artifacts")
    report = json.loads((digits_run / "report.json").read_text())
    arts = [Artifact.from_dict(a) for a in report["artifacts"] if a["runtime"] in ("litert", "onnxruntime")]
    for a in arts:
        a.verification = SimpleNamespace(passed=True)
    sections = []
    healthy = farm_toml(tmp_path / "devices.toml", [("fast", devices.fast.uri(), "host"),
                                                    ("slow", devices.slow.uri(), "host")],
                        lock_dir=str(tmp_path / "locks"))
    ctx = SimpleNamespace(out=out, target=load_target("host"), threads=1, device=f"farm:{healthy}",
                          report={"device": f"farm:{healthy}"}, progress=None, example_input=None,
                          all_artifacts=lambda: arts, add_section=lambda t, m: sections.append((t, m)),
                          record=lambda **kw: sections.append(("record", kw)))
    src = latency_source(ctx.target, ctx.device)
    assert src.source == "measured" and src.explicit and not src.local
    measure.run(None, measure.Settings(runs=20, warmup=2), ctx)
    devices_used = {a.latency.extra["farm"]["device"] for a in arts}
    assert all(a.latency.source == "measured" for a in arts) and len(devices_used) == 1  # side by side, one device
    assert all(a.latencies and a.latencies[0].via == a.latency.via for a in arts)
    assert "raw" not in arts[0].latency.extra
    record = next(kw for t, kw in sections if t == "record")["details"]
    assert record["measured"] == len(arts) and record["profiles"]
    prof = json.loads((out / record["profiles"][0]).read_text())
    assert prof["device_id"].endswith("-via-ssh") and all(e["extra"]["farm_device"] in ("fast", "slow")
                                                          for e in prof["entries"])
    assert any(t == "Device latency" for t, _ in sections)


@pytest.mark.slow
def test_quantize_searches_on_the_farm_with_two_workers(devices, tmp_path: Path):
    """`edgekit compress --recipe quant --device farm:...` with two worker processes: every candidate is timed on
    a farm device (interleaved with the anchor there), the study lives in the run folder, and the final artifacts
    are measured on the farm with per-device provenance."""
    healthy = farm_toml(tmp_path / "devices.toml", [("fast", devices.fast.uri(), "host"),
                                                    ("slow", devices.slow.uri(), "host")],
                        lock_dir=str(tmp_path / "locks"))
    out = tmp_path / "run"
    r = run_cli("compress", "--recipe", "quant", "--device", f"farm:{healthy}", "--out", str(out),
                "--set", "quantize.workers=2", "--set", "quantize.trials=10", "--set", "quantize.formats=[onnx]",
                "--set", "export.formats=[onnx]", "--set", "quantize.final_runs=20", "--set", "measure.runs=20",
                timeout=1200)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    search = next(s for s in report["stages"] if s["name"] == "quantize")["details"]["searches"][0]
    assert search["latency_source"] == "measured" and search["study"]["workers"] == 2
    assert search["study"]["storage"].endswith("/state/quant_study.db") and (out / "state" / "quant_study.db").is_file()
    assert [w["returncode"] for w in search["study"]["worker_exits"]] == [0]
    for a in report["artifacts"]:
        lat = a["latency"]
        assert lat["source"] == "measured" and lat["farm"]["device"] in ("fast", "slow"), lat
        assert lat["via"].startswith("ssh://") and "identity" not in lat["via"]
    import optuna

    from edgekit.study import StudyPlan, open_storage

    plan = StudyPlan(search["study"]["storage"], search["study"]["name"])
    trials = optuna.load_study(study_name=plan.name, storage=open_storage(plan)).get_trials(deepcopy=False)
    workers = {t.user_attrs.get("worker") for t in trials if t.state.name == "COMPLETE"}
    assert {"cand", "w1"} <= workers, "both processes ran trials"
    farm_devices = {(t.user_attrs["candidate"].get("extra") or {}).get("farm_device") for t in trials
                    if t.state.name == "COMPLETE"}
    assert farm_devices <= {"fast", "slow", None} and farm_devices & {"fast", "slow"}
