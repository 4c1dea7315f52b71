"""Android benchmark harness: benchmark_model output parsing (documented format, tests/fixtures/android/README.md) and
the adb orchestration on recorded command sequences. Nothing here has run on a phone."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_cli
from edgekit.devices import Job
from edgekit.devices import adb as android
from edgekit.devices.android_harness import harness_script, profile_from_harness_log, split_sections
from edgekit.devices.benchmark_log import parse_benchmark_output
from edgekit.errors import InputError, RuntimeUnavailable, SettingsError
from edgekit.latency.profile import load_profile_file, save_profile
from edgekit.report import Artifact
from edgekit.targets import load_target

FIX = Path(__file__).parent / "fixtures" / "android"
CURRENT = (FIX / "benchmark_model_op_profiling.txt").read_text()
LEGACY = (FIX / "benchmark_model_legacy.txt").read_text()
LOGCAT = (FIX / "benchmark_apk_logcat.txt").read_text()
GETPROP = (FIX / "getprop.txt").read_text()
THERMAL = (FIX / "dumpsys_thermalservice.txt").read_text()
THERMAL_HOT = (FIX / "dumpsys_thermalservice_hot.txt").read_text()


def test_current_format_with_op_profiling():
    r = parse_benchmark_output(CURRENT)
    assert r["format"] == "current" and r["params"]["Num threads"] == "4"
    assert r["init_ms"] == pytest.approx(61.204) and r["first_inference_ms"] == pytest.approx(14.811)
    assert r["warmup"]["count"] == 58 and r["steady"]["count"] == 115
    assert r["steady"]["avg_us"] == pytest.approx(8602.37) and r["steady"]["std_us"] == 263
    assert r["memory"] == {"delta_init_mb": 31.6484, "delta_overall_mb": 39.1953}
    ops = r["per_op"]
    # Only the regular runs' Run Order table: not the init table, not "Top by Computation Time" (a repeat).
    assert len(ops) == 8 and not any(o["type"] in ("ModifyGraphWithDelegate", "AllocateTensors") for o in ops)
    dw = next(o for o in ops if o["type"] == "Convolution (NHWC, F32) DWConv")  # a node type with spaces
    assert dw["times_called"] == 17 and dw["ms"] == pytest.approx(dw["avg_ms"] * 17)
    assert sum(o["percent"] for o in ops) == pytest.approx(100, abs=0.05)
    # Operator time per inference adds up to the profiled runs' mean, and never exceeds it.
    total_ms = sum(o["ms"] for o in ops)
    assert total_ms <= r["per_op_total"]["avg_us"] / 1e3 <= r["steady"]["avg_us"] / 1e3 * 1.01
    assert total_ms == pytest.approx(r["per_op_total"]["avg_us"] / 1e3, rel=0.05)


def test_legacy_tab_format_and_readme_excerpt():
    r = parse_benchmark_output(LEGACY)
    assert r["format"] == "legacy" and r["steady"]["count"] == 236 and r["init_ms"] == pytest.approx(1.914)
    assert [o["type"] for o in r["per_op"]][:3] == ["CONV_2D", "MAX_POOL_2D", "CONV_2D"]
    assert all(o["times_called"] == 0 and o["ms"] == o["avg_ms"] and "start_ms" in o for o in r["per_op"])
    # TFLite's README shows only the tables and the final line: the profile's own Timings line is then the runs.
    excerpt = LEGACY[LEGACY.index("=============================="):]
    e = parse_benchmark_output(excerpt)
    assert e["steady"]["count"] == 236 and e["steady"]["avg_us"] == pytest.approx(4238.9)
    assert len(e["per_op"]) == len(r["per_op"]) == 8


def test_apk_logcat_keeps_only_the_benchmark_lines():
    r = parse_benchmark_output(LOGCAT)
    assert r["steady"]["count"] == 6871 and len(r["per_op"]) == 4
    assert not any("WindowManager" in o["name"] or "Activity" in o["name"] for o in r["per_op"])
    assert r["params"]["Graph"].endswith("model_fp32.tflite")


def test_not_a_benchmark_log_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="no benchmark_model result"):
        parse_benchmark_output("Segmentation fault\n")
    bad = tmp_path / "bad.log"
    bad.write_text("hello\n")
    r = run_cli("profile", "--target", "android-arm64", "--from-log", str(bad), "--no-save")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "benchmark_model" in r.stderr


def test_profile_from_log_is_a_valid_profile(tmp_path):
    prof = android.profile_from_log(CURRENT, "android-arm64")
    (e,) = prof["entries"]
    assert e["artifact"] == "model_fp32.tflite" and e["threads"] == 4 and e["format"] == "tflite"
    t = e["timing"]
    assert t["p50_ms"] == pytest.approx(8.60237, abs=1e-4) and "estimated" in t["percentiles"]
    assert t["min_ms"] <= t["p50_ms"] <= t["p90_ms"] <= t["max_ms"]
    assert len(e["per_op"]) == 8 and e["extra"]["init_ms"] == pytest.approx(61.204)
    path = save_profile(prof, root=tmp_path)
    assert load_profile_file(path)["entries"][0]["per_op"][0]["type"] == "Convolution (NHWC, F32) IGEMM"
    emu = {**android.facts_from_props(android.parse_getprop(GETPROP.replace("[ro.kernel.qemu]: []",
                                                                              "[ro.kernel.qemu]: [1]")))}
    with pytest.raises(SettingsError, match="emulator"):
        android.profile_from_log(CURRENT, "android-arm64", device_facts=emu)


def test_device_facts_and_thermal_state():
    f = android.facts_from_props(android.parse_getprop(GETPROP), "0-7\n")
    assert (f["model"], f["soc"], f["android_version"], f["arch"], f["cores"]) == (
        "Pixel 7", "Google GS201", "14", "aarch64", 8)
    assert not f["emulated"]
    cool, hot = android.parse_thermal(THERMAL), android.parse_thermal(THERMAL_HOT)
    assert cool["thermal_status"] == 0 and not cool["throttling"] and cool["temperature_c"] == 41.5
    assert hot["thermal_status_name"] == "moderate" and hot["throttling"] and hot["temperature_c"] == 67.9


class FakeAdb:
    """Replays a phone: records every argv, answers from the fixtures."""

    def __init__(self, has_binary: bool = True, apk: bool = False, state: str = "device", getprop: str = GETPROP):
        self.calls: list[list[str]] = []
        self.has_binary, self.apk, self.state, self.getprop = has_binary, apk, state, getprop
        self.thermal = [THERMAL, THERMAL_HOT]
        self.logcat_polls = 0

    def __call__(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        self.calls.append(argv)
        args = argv[3:] if argv[1] == "-s" else argv[1:]
        if args[0] == "get-state":
            return 0, self.state + "\n", ""
        if args[0] == "push":
            return 0, "1 file pushed\n", ""
        if args[0] == "logcat":
            if "-d" not in args:
                return 0, "", ""
            self.logcat_polls += 1
            done = self.logcat_polls >= 2  # the first poll sees a run still in progress
            return 0, (LOGCAT if done else LOGCAT[: LOGCAT.index("Operator-wise")]), ""
        assert args[0] == "shell" and len(args) == 2, argv  # one quoted command string, never loose words
        words = shlex.split(args[1])
        if words == ["getprop"]:
            return 0, self.getprop, ""
        if words[:1] == ["cat"]:
            return 0, "0-7\n", ""
        if words[:2] == ["dumpsys", "thermalservice"]:
            return 0, self.thermal.pop(0) if self.thermal else THERMAL, ""
        if words[:1] == ["ls"]:
            return 0, "benchmark_model\n" if self.has_binary else "", ""
        if words[:2] == ["pm", "list"]:
            return 0, f"package:{android.APK_PACKAGE}\n" if self.apk else "", ""
        if words[0] == android.REMOTE_BINARY:
            return 0, CURRENT, ""
        if words[:2] in (["chmod", "755"], ["rm", "-f"], ["am", "start"]):
            return 0, "", ""
        return 1, "", f"unexpected {words}"

    def shell_words(self) -> list[list[str]]:
        return [shlex.split(c[-1]) for c in self.calls if c[3] == "shell"]


@pytest.fixture
def tflite(tmp_path) -> Path:
    p = tmp_path / "my model;rm -rf x.tflite"  # a hostile name must stay one quoted word
    p.write_bytes(b"TFL3" + bytes(64))
    return p


def test_binary_path_command_sequence(tflite):
    fake = FakeAdb()
    adb = android.Adb("R58M123", binary="adb", runner=fake)
    prof = android.profile_artifact_adb(tflite, load_target("android-arm64"), "R58M123", 4, 50, 5, adb=adb)
    assert all(c[:3] == ["adb", "-s", "R58M123"] for c in fake.calls)
    steps = [c[3] if c[3] != "shell" else shlex.split(c[4])[0] for c in fake.calls]
    assert steps == ["get-state", "getprop", "cat", "dumpsys", "ls", "push", android.REMOTE_BINARY, "rm", "dumpsys"]
    remote = android.remote_model_path(tflite)
    assert ";" not in remote and " " not in remote and fake.calls[5][4:] == [str(tflite), remote]
    bench = next(w for w in fake.shell_words() if w[0] == android.REMOTE_BINARY)
    assert bench[1:] == [f"--graph={remote}", "--num_threads=4", "--warmup_runs=5", "--num_runs=50",
                         "--use_xnnpack=true", "--enable_op_profiling=true"]
    assert ["rm", "-f", remote] in fake.shell_words()  # the phone is left clean
    (e,) = prof["entries"]
    assert e["artifact"] == tflite.name and e["via"] == "adb://R58M123" and len(e["per_op"]) == 8
    assert e["conditions"]["before"]["thermal_status"] == 0 and e["conditions"]["throttling"] is True
    assert prof["device"]["model"] == "Pixel 7" and prof["source"] == "adb"


def test_binary_is_pushed_when_given_and_required_otherwise(tflite, tmp_path, monkeypatch):
    fake = FakeAdb(has_binary=False)
    adb = android.Adb("S1", runner=fake)
    with pytest.raises(RuntimeUnavailable, match="EDGEKIT_BENCHMARK_MODEL"):
        android.profile_artifact_adb(tflite, load_target("android-arm64"), "S1", 4, 50, 5, adb=adb)
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF")
    monkeypatch.setenv("EDGEKIT_BENCHMARK_MODEL", str(binary))
    fake = FakeAdb(has_binary=False)
    android.profile_artifact_adb(tflite, load_target("android-arm64"), "S1", 4, 50, 5,
                                 adb=android.Adb("S1", runner=fake))
    pushes = [c[4:] for c in fake.calls if c[3] == "push"]
    assert pushes[0] == [str(binary), android.REMOTE_BINARY]
    assert ["chmod", "755", android.REMOTE_BINARY] in fake.shell_words()


def test_apk_path_polls_logcat(tflite, monkeypatch):
    monkeypatch.setattr(android, "APK_POLL_S", 0.0)
    fake = FakeAdb(apk=True)
    adb = android.Adb("S2", runner=fake)
    prof = android.profile_artifact_adb(tflite, load_target("android-arm64"), "S2", 4, 100, 10, tool="apk",
                                        adb=adb)
    am = next(w for w in fake.shell_words() if w[:2] == ["am", "start"])
    assert am[:6] == ["am", "start", "-S", "-W", "-n", android.APK_ACTIVITY] and am[6] == "--es"
    assert am[7] == "args" and len(am) == 9 and am[8].startswith("--graph=") and "--num_threads=4" in am[8]
    assert fake.logcat_polls == 2 and prof["entries"][0]["timing"]["runs"] == 6871
    stuck = FakeAdb(apk=True)
    stuck.logcat_polls = -10**9  # the run never finishes
    args = android.benchmark_args(android.remote_model_path(tflite), 4, 5, 50)
    with pytest.raises(RuntimeUnavailable, match="no result within"):
        android.run_apk(android.Adb("S2", runner=stuck), tflite, args, timeout=0.05, poll_s=0.01)
    assert ["rm", "-f", android.remote_model_path(tflite)] in stuck.shell_words()  # cleaned up anyway


def test_offline_device_and_emulator_are_refused(tflite):
    tgt = load_target("android-arm64")
    with pytest.raises(RuntimeUnavailable, match="unauthorized"):
        android.profile_artifact_adb(tflite, tgt, "S3", 4, 50, 5,
                                     adb=android.Adb("S3", runner=FakeAdb(state="unauthorized")))
    emu = FakeAdb(getprop=GETPROP.replace("[ro.kernel.qemu]: []", "[ro.kernel.qemu]: [1]"))
    with pytest.raises(SettingsError, match="emulat"):
        android.profile_artifact_adb(tflite, tgt, "S3", 4, 50, 5, adb=android.Adb("S3", runner=emu))
    with pytest.raises(SettingsError):
        android.Adb("-s evil", runner=FakeAdb())


def test_adb_device_and_measure_stage_fill_latency_and_run_folder_profile(tflite, tmp_path):
    from edgekit.devices import latency_source
    from edgekit.devices.adb import AndroidDevice
    from edgekit.stages._latency_record import record_latencies

    out = tmp_path / "run"
    (out / "artifacts").mkdir(parents=True)
    art_path = out / "artifacts" / "model_fp32.tflite"
    art_path.write_bytes(tflite.read_bytes())
    arts = [Artifact("artifacts/model_fp32.tflite", "tflite", "litert", 1, None, 0),
            Artifact("artifacts/m.onnx", "onnx", "onnxruntime", 1, None, 0)]
    tgt = load_target("android-arm64")
    phone = AndroidDevice("adb://R58M123", target=tgt, adb=android.Adb("R58M123", runner=FakeAdb()))
    lats = phone.time([Job.from_artifact(a, out) for a in arts], runs=50, warmup=5, threads=4)
    assert lats[0].extra["raw"]["profile"]["device"]["model"] == "Pixel 7"
    sections = []
    ctx = SimpleNamespace(out=out, target=tgt, add_section=lambda t, m: sections.append(t))
    written = record_latencies([(a, [lat]) for a, lat in zip(arts, lats, strict=True)],
                               latency_source(tgt, "adb://R58M123"), ctx)
    lat = arts[0].latency
    assert lat.source == "measured" and "Pixel 7" in lat.device and "Android 14" in lat.device
    assert lat.p50_ms == pytest.approx(8.6024) and lat.threads == 4 and lat.device_id and lat.via == "adb://R58M123"
    assert "raw" not in lat.extra and arts[0].latencies == [lat]
    assert arts[1].latency.source == "none" and "benchmark_model" in arts[1].latency.reason
    (path,) = written
    assert load_profile_file(out / path)["entries"] and path.startswith("profiles/android-arm64/")
    assert sections == ["Device latency"]
    with pytest.raises(RuntimeUnavailable, match="returns no outputs"):
        phone.run(Job.from_artifact(arts[0], out), np.zeros((1, 1, 8, 8), np.float32))


def test_harness_script_runs_the_same_benchmark_command(tflite, monkeypatch):
    tgt = load_target("android-arm64")
    script = harness_script(tflite, tgt, 4, 50, 5, serial="R58M123")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    fake = FakeAdb()
    android.profile_artifact_adb(tflite, tgt, "R58M123", 4, 50, 5, adb=android.Adb("R58M123", runner=fake))
    bench = next(w for w in fake.shell_words() if w[0] == android.REMOTE_BINARY)
    line = next(ln for ln in script.splitlines() if android.REMOTE_BINARY + " --graph" in ln)
    # The script's command, as the remote shell will see it, is the automated path's command word for word.
    assert shlex.split(line.split("$ADB shell ", 1)[1].split(" | tee")[0]) == bench
    apk = harness_script(tflite, tgt, 4, 50, 5, tool="apk")
    assert subprocess.run(["sh", "-n"], input=apk, text=True).returncode == 0
    apk_fake = FakeAdb(apk=True)
    monkeypatch.setattr(android, "APK_POLL_S", 0.0)
    android.profile_artifact_adb(tflite, tgt, "R58M123", 4, 50, 5, tool="apk", adb=android.Adb("R58M123", runner=apk_fake))
    am = next(w for w in apk_fake.shell_words() if w[:2] == ["am", "start"])
    line = next(ln for ln in apk.splitlines() if " am start " in ln)
    # The local shell splits the line, adb joins the words with spaces, the phone's shell splits again.
    local_words = shlex.split(line.split("$ADB shell ", 1)[1])
    assert shlex.split(" ".join(local_words)) == am


def test_harness_log_imports_through_the_cli(tflite, tmp_path):
    remote = android.remote_model_path(tflite)
    bench = CURRENT.replace("/data/local/tmp/edgekit-5c1e0b7a-model_fp32.tflite", remote)
    log = tmp_path / "edgekit-android.log"
    log.write_text(f"=== edgekit: getprop ===\n{GETPROP}=== edgekit: cpus ===\n0-7\n"
                   f"=== edgekit: thermal before ===\n{THERMAL}=== edgekit: benchmark_model ===\n{bench}"
                   f"=== edgekit: thermal after ===\n{THERMAL_HOT}")
    assert set(split_sections(log.read_text())) >= {"getprop", "benchmark_model", "thermal after"}
    prof = profile_from_harness_log(log.read_text(), "android-arm64", tflite)
    e = prof["entries"][0]
    assert prof["device"]["model"] == "Pixel 7" and e["artifact"] == tflite.name and e["conditions"]["throttling"]
    other = tmp_path / "other.tflite"
    other.write_bytes(b"different")
    with pytest.raises(InputError, match="sha256"):
        profile_from_harness_log(log.read_text(), "android-arm64", other)
    r = run_cli("profile", str(tflite), "--target", "android-arm64", "--from-log", str(log), "--no-save")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["artifacts"][0]["ops"] == 8 and out["source"] == "log" and "pixel-7" in out["device_id"]
    h = run_cli("android-harness", str(tflite), "--serial", "R58M123")
    assert h.returncode == 0 and "--enable_op_profiling=true" in h.stdout and "--from-log" in h.stdout


FAKE_ADB = """#!{python}
# A recording adb: logs argv, answers like a phone from the fixtures (standard library only, so it starts fast).
import json, os, shlex, sys
fix = {fix!r}
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
args = args[2:] if args[0] == "-s" else args
words = shlex.split(args[1]) if args[0] == "shell" else []
read = lambda name: open(os.path.join(fix, name)).read()
if args[0] == "get-state":
    print("device")
elif args[0] == "push":
    print("1 file pushed")
elif words == ["getprop"]:
    sys.stdout.write(read("getprop.txt"))
elif words[:1] == ["cat"]:
    print("0-7")
elif words[:1] == ["dumpsys"]:
    sys.stdout.write(read("dumpsys_thermalservice.txt"))
elif words[:1] == ["ls"]:
    print("benchmark_model")
elif words[:1] == ["/data/local/tmp/benchmark_model"]:
    sys.stdout.write(read("benchmark_model_op_profiling.txt"))
elif words[:2] != ["rm", "-f"]:
    sys.exit("unexpected " + repr(args))
"""


def test_profile_command_over_adb_with_a_recording_adb(tflite, tmp_path):
    fake = tmp_path / "adb"
    fake.write_text(FAKE_ADB.format(python=sys.executable, fix=str(FIX)))
    fake.chmod(0o755)
    log = tmp_path / "argv.jsonl"
    r = run_cli("profile", str(tflite), "--target", "android-arm64", "--device", "adb://R58M123", "--no-save",
                env={"EDGEKIT_ADB": str(fake), "FAKE_ADB_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls[0] == ["-s", "R58M123", "get-state"] and any("--enable_op_profiling=true" in c[-1] for c in calls)
    assert all(len(c) == 4 for c in calls if c[2] == "shell")  # every remote command is one quoted string
    shells = [shlex.split(c[3])[0] for c in calls if c[2] == "shell"]
    assert shells == ["getprop", "cat", "dumpsys", "ls", android.REMOTE_BINARY, "rm", "dumpsys"]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["source"] == "adb" and out["artifacts"][0]["ops"] == 8
