"""`adb://[SERIAL][?tool=apk]`: an Android phone, timed by TFLite's own benchmark_model (native binary or the
benchmark APK) over adb. The adb sequence and the output parser live in edgekit.devices.adb.

THIS PATH HAS NOT RUN ON A PHONE (see edgekit.devices.adb): it is tested on recorded adb sequences.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.devices import BaseDevice, Job
from edgekit.devices.benchmark_log import parse_benchmark_output
from edgekit.errors import EdgekitError, InputError, RuntimeUnavailable, SettingsError
from edgekit.fileio import sha256_file

if TYPE_CHECKING:
    import numpy as np

    from edgekit.report import Latency
    from edgekit.targets import Target


REMOTE_DIR = "/data/local/tmp"
REMOTE_BINARY = f"{REMOTE_DIR}/benchmark_model"
APK_PACKAGE = "org.tensorflow.lite.benchmark"
APK_ACTIVITY = f"{APK_PACKAGE}/.BenchmarkModelActivity"
LOG_TAG = "tflite"
APK_POLL_S = 2.0  # how often logcat is read while the benchmark APK runs
THERMAL_NAMES = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")
# argv, timeout -> (returncode, stdout, stderr); the default runs the real adb.
Runner = Callable[[list[str], float], tuple[int, str, str]]


def _subprocess_runner(argv: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"`{shlex.join(argv[:4])} ...` took longer than {timeout:.0f} s") from None
    return r.returncode, r.stdout, r.stderr


class Adb:
    """One device over adb. Remote commands are built from quoted words, never pasted into a shell string."""

    def __init__(self, serial: str = "", binary: str | None = None, runner: Runner | None = None,
                 timeout: float = 120.0) -> None:
        if serial.startswith("-") or any(c.isspace() for c in serial):
            raise SettingsError(f"invalid adb serial '{serial}'")
        self.serial = serial
        self.binary = binary or os.environ.get("EDGEKIT_ADB") or shutil.which("adb") or ""
        if not self.binary and runner is None:
            raise RuntimeUnavailable("adb is not installed (Android platform-tools; Debian package `adb`)")
        self.runner = runner or _subprocess_runner
        self.timeout = timeout

    def run(self, *args: str, timeout: float | None = None) -> str:
        argv = [self.binary or "adb", *(["-s", self.serial] if self.serial else []), *args]
        rc, out, err = self.runner(argv, timeout or self.timeout)
        if rc != 0:
            msg = (err.strip() or out.strip() or f"exit code {rc}").splitlines()[-1][:200]
            raise RuntimeUnavailable(f"adb {' '.join(args[:2])} failed on {self.serial or 'the device'}: {msg}")
        return out

    def shell(self, *words: str, timeout: float | None = None) -> str:
        return self.run("shell", " ".join(shlex.quote(w) for w in words), timeout=timeout)

    def check_online(self) -> None:
        state = self.run("get-state", timeout=30).strip()
        if state != "device":
            raise RuntimeUnavailable(f"adb device {self.serial or '(default)'} is '{state}', not 'device' "
                                     f"(check `adb devices` and the USB debugging prompt on the phone)")


def benchmark_args(remote_model: str, threads: int, warmup: int, runs: int, xnnpack: bool = True,
                   op_profiling: bool = True) -> list[str]:
    """benchmark_model flags (the same for the binary and the APK)."""
    args = [f"--graph={remote_model}", f"--num_threads={threads}", f"--warmup_runs={warmup}", f"--num_runs={runs}"]
    if xnnpack:
        args.append("--use_xnnpack=true")
    if op_profiling:
        args.append("--enable_op_profiling=true")
    return args


def remote_model_path(local: Path) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", local.name)
    return f"{REMOTE_DIR}/edgekit-{sha256_file(local)[:8]}-{safe}"


def run_binary(adb: Adb, model: Path, args: list[str], binary: Path | None = None, timeout: float = 900.0) -> str:
    """Pushes the model (and benchmark_model when the phone lacks it), runs it, removes the model; returns stdout."""
    binary = binary or (Path(os.environ["EDGEKIT_BENCHMARK_MODEL"]) if os.environ.get("EDGEKIT_BENCHMARK_MODEL")
                        else None)
    if binary is not None:
        if not binary.is_file():
            raise InputError(f"benchmark_model binary {binary} does not exist")
        adb.run("push", str(binary), REMOTE_BINARY, timeout=300)
        adb.shell("chmod", "755", REMOTE_BINARY)
    elif "benchmark_model" not in adb.shell("ls", REMOTE_DIR).split():
        raise RuntimeUnavailable(f"{REMOTE_BINARY} is not on the phone: download TFLite's prebuilt "
                                 "android_aarch64_benchmark_model and pass it with EDGEKIT_BENCHMARK_MODEL=PATH "
                                 "(or push it there yourself)")
    remote = args[0].split("=", 1)[1]
    adb.run("push", str(model), remote, timeout=300)
    try:
        return adb.shell(REMOTE_BINARY, *args, timeout=timeout)
    finally:
        adb.shell("rm", "-f", remote)


def run_apk(adb: Adb, model: Path, args: list[str], timeout: float = 900.0, poll_s: float | None = None,
            sleep: Callable[[float], None] = time.sleep) -> str:
    """Runs the benchmark APK on the pushed model and returns its logcat lines (tag `tflite`)."""
    if APK_PACKAGE not in adb.shell("pm", "list", "packages", APK_PACKAGE):
        raise RuntimeUnavailable(f"the TFLite benchmark APK ({APK_PACKAGE}) is not installed: "
                                 "`adb install -r -d -g benchmark_model.apk`")
    remote = args[0].split("=", 1)[1]
    adb.run("push", str(model), remote, timeout=300)
    try:
        adb.run("logcat", "-c")
        adb.shell("am", "start", "-S", "-W", "-n", APK_ACTIVITY, "--es", "args", " ".join(args))
        deadline = time.monotonic() + timeout
        while True:
            log = adb.run("logcat", "-d", "-v", "threadtime", "-s", f"{LOG_TAG}:V", timeout=60)
            if _apk_finished(log, "--enable_op_profiling=true" in args):
                return log
            if time.monotonic() >= deadline:
                raise RuntimeUnavailable(f"the benchmark APK printed no result within {timeout:.0f} s "
                                         f"(see `adb logcat -s {LOG_TAG}`)")
            sleep(APK_POLL_S if poll_s is None else poll_s)
    finally:
        adb.shell("rm", "-f", remote)


def _apk_finished(log: str, op_profiling: bool) -> bool:
    if "Inference timings in us" not in log:
        return False
    if not op_profiling:
        return True
    tail = log.split("Operator-wise Profiling Info for Regular Benchmark Runs", 1)
    return len(tail) == 2 and "nodes observed" in tail[1]


def parse_getprop(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, flags=re.M))


def facts_from_props(props: dict[str, str], cpus: str = "") -> dict[str, Any]:
    """Device facts (model, SoC, Android version, ABI) from `getprop` output."""
    abi = props.get("ro.product.cpu.abi", "")
    soc = " ".join(p for p in (props.get("ro.soc.manufacturer", ""), props.get("ro.soc.model", "")) if p)
    soc = soc or props.get("ro.board.platform") or props.get("ro.hardware", "")
    model = props.get("ro.product.model", "")
    cores = None
    if m := re.fullmatch(r"\s*0-(\d+)\s*", cpus or ""):
        cores = int(m[1]) + 1
    return {"model": model, "manufacturer": props.get("ro.product.manufacturer", ""), "soc": soc,
            "android_version": props.get("ro.build.version.release", ""),
            "sdk": props.get("ro.build.version.sdk", ""), "abi": abi, "build": props.get("ro.build.fingerprint", ""),
            "arch": {"arm64-v8a": "aarch64", "armeabi-v7a": "armv7l", "x86_64": "x86_64", "x86": "i686"}.get(abi, abi),
            "cpu": soc, "cores": cores, "hostname": model or "android",
            "emulated": props.get("ro.kernel.qemu") == "1" or props.get("ro.hardware") in ("ranchu", "goldfish")}


def parse_thermal(text: str) -> dict[str, Any]:
    """Thermal state from `dumpsys thermalservice` (Android 10+): status 0 (none) .. 6 (shutdown), temperatures."""
    out: dict[str, Any] = {}
    if m := re.search(r"Thermal Status:\s*(\d+)", text):
        status = int(m[1])
        out.update(thermal_status=status, thermal_status_name=THERMAL_NAMES[min(status, 6)],
                   throttling=status >= 1)  # LIGHT is already throttling, even if the UX is not affected
    current = text.split("Current temperatures from HAL", 1)[-1]
    temps = re.findall(r"Temperature\{mValue=([-\d.]+), mType=(-?\d+), mName=([^,}]+)", current)
    if temps:
        out["temperatures_c"] = {name.strip(): float(v) for v, _, name in temps}
        cpu = [float(v) for v, t, _ in temps if t == "0"]  # TYPE_CPU
        out["temperature_c"] = max(cpu) if cpu else max(float(v) for v, _, _ in temps)
    return out


def device_facts_adb(adb: Adb) -> dict[str, Any]:
    props = parse_getprop(adb.shell("getprop"))
    try:
        cpus = adb.shell("cat", "/sys/devices/system/cpu/possible")
    except RuntimeUnavailable:
        cpus = ""
    return {**facts_from_props(props, cpus), "serial": adb.serial}


def thermal_state(adb: Adb) -> dict[str, Any]:
    try:
        return parse_thermal(adb.shell("dumpsys", "thermalservice"))
    except RuntimeUnavailable:
        return {}


def timing_from_result(parsed: dict[str, Any]) -> dict[str, Any]:
    """The profile's timing record. benchmark_model reports mean/std/min/max, not percentiles: p50 is its mean and
    p90 is mean + 1.2816 std (normal approximation, capped at max); `percentiles` says so."""
    s = parsed["steady"]
    avg = s["avg_us"] / 1e3
    std = s.get("std_us", 0.0) / 1e3
    p90 = avg + 1.2816 * std
    if "max_us" in s:
        p90 = min(p90, s["max_us"] / 1e3)
    t = {"p50_ms": round(avg, 4), "p90_ms": round(max(avg, p90), 4),
         "min_ms": round(min(s.get("min_us", s["avg_us"]) / 1e3, avg), 4), "mean_ms": round(avg, 4),
         "std_ms": round(std, 4), "runs": int(s.get("count", 0)),
         "percentiles": "estimated from benchmark_model's mean and std (it reports no percentiles)"}
    if "max_us" in s:
        t["max_ms"] = round(s["max_us"] / 1e3, 4)
    if parsed.get("warmup"):
        t["warmup"] = int(parsed["warmup"].get("count", 0)) or None
    return t


def _log_threads(parsed: dict[str, Any]) -> int | None:
    for key in ("Num threads", "#threads used for CPU inference"):
        v = parsed["params"].get(key, "")
        if v.lstrip("-").isdigit() and int(v) > 0:
            return int(v)
    return None


def profile_from_log(text: str, target: Target | str, *, artifact_name: str | None = None, sha256: str = "",
                     device_facts: dict[str, Any] | None = None, threads: int | None = None, via: str = "log",
                     conditions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Turns benchmark_model output (stdout or the APK's logcat, with or without op profiling) into a profile.

    Args:
        text: the captured output.
        target: the target it was measured for (name or Target).
        artifact_name: the model's file name (default: the --graph file named in the log).
        sha256: the model's hash, when known.
        device_facts: facts of the phone (facts_from_props(parse_getprop(...))); unknown when not given.
        threads: threads used (default: read from the log, else the target's).
        via: how the output reached edgekit ("adb://SERIAL", "log").
        conditions: thermal state etc. at measurement time.
    """
    from edgekit.latency import profile as prof
    from edgekit.targets import load_target

    tgt = load_target(target) if isinstance(target, str) else target
    parsed = parse_benchmark_output(text)
    graph = parsed["params"].get("Graph", "")
    # edgekit pushes models as edgekit-<sha256[:8]>-NAME; the profile names the artifact itself.
    name = artifact_name or re.sub(r"^edgekit-[0-9a-f]{8}-", "", graph.rsplit("/", 1)[-1]) or "model.tflite"
    n_threads = threads or _log_threads(parsed) or tgt.threads
    facts = dict(device_facts or {"model": "unknown (imported log)", "arch": tgt.arch, "hostname": "imported-log"})
    if facts.get("emulated"):
        raise SettingsError("the log comes from an emulator: emulated timings are never stored as a profile")
    source = "adb" if via.startswith("adb://") else "log"
    device_id = prof.device_id_from_facts(facts, via="adb" if source == "adb" else "log")
    profile = prof.new_profile(tgt.name, device_id, facts, source)
    per_op = [{"name": o["name"], "type": o["type"], "ms": round(o["ms"], 6), "calls": max(o["times_called"], 1)}
              for o in parsed["per_op"]]
    runtime = "tflite benchmark_model" + (" (xnnpack)" if any("XNNPACK" in d for d in parsed["delegates"]) else "")
    extra = {"tool": "benchmark_model", "log_format": parsed["format"], "init_ms": parsed["init_ms"],
             "first_inference_ms": parsed["first_inference_ms"], "warmup": parsed["warmup"],
             "steady": parsed["steady"], "memory": parsed["memory"], "model_size_mb": parsed["model_size_mb"],
             "delegates": parsed["delegates"], "op_profile_runs": parsed["per_op_total"],
             "threads_from": "log" if _log_threads(parsed) else ("argument" if threads else "target")}
    prof.add_entry(profile, name, "tflite", runtime, n_threads, timing_from_result(parsed), per_op, sha256=sha256,
                   via=via, conditions=conditions, extra=extra)
    return profile


def _tool(device_uri: str | None) -> str:
    query = urllib.parse.urlsplit(device_uri or "").query
    tool = dict(urllib.parse.parse_qsl(query)).get("tool", "binary")
    if tool not in ("binary", "apk"):
        raise SettingsError(f"device '{device_uri}': tool must be binary or apk, got '{tool}'")
    return tool


def profile_artifact_adb(path: Path, target: Target, serial: str, threads: int, runs: int, warmup: int,
                         tool: str = "binary", adb: Adb | None = None) -> dict[str, Any]:
    """Measures one .tflite file on the phone and returns its profile (device facts and thermal state included)."""
    from edgekit.devices.facts import check_device_fits_target

    adb = adb or Adb(serial)
    adb.check_online()
    facts = device_facts_adb(adb)
    check_device_fits_target(facts, target, f"adb://{serial}")
    spec = target.runtime_for("tflite")
    args = benchmark_args(remote_model_path(path), threads, warmup, runs,
                          xnnpack=bool(spec and spec.delegate == "xnnpack"))
    before = thermal_state(adb)
    text = run_apk(adb, path, args) if tool == "apk" else run_binary(adb, path, args)
    after = thermal_state(adb)
    conditions = {"before": before, "after": after, "throttling": bool(before.get("throttling")
                                                                        or after.get("throttling")),
                  "temperature_c": after.get("temperature_c"), "tool": tool}
    return profile_from_log(text, target, artifact_name=path.name, sha256=sha256_file(path), device_facts=facts,
                            threads=threads, via=f"adb://{serial}", conditions=conditions)


class AndroidDevice(BaseDevice):
    """One phone over adb.

    Args:
        uri: adb://[SERIAL][?tool=binary|apk].
        target: the target its timings must fit (needed: it picks the delegate).
        adb: an Adb to use (tests inject one with a recording runner).
    """

    scheme = "adb"

    def __init__(self, uri: str, target: Target | None = None, adb: Adb | None = None, **_: Any) -> None:
        super().__init__(target)
        parsed = urllib.parse.urlsplit(uri)
        self.serial = parsed.netloc or parsed.path.strip("/")
        self.tool = _tool(uri)
        self.uri = f"adb://{self.serial}"
        self._adb = adb

    @property
    def adb(self) -> Adb:
        if self._adb is None:
            self._adb = Adb(self.serial)
        return self._adb

    def _read_facts(self) -> dict[str, Any]:
        self.adb.check_online()
        return device_facts_adb(self.adb)

    def runtimes(self) -> tuple[str, ...]:
        return ("litert",)

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """Each .tflite file in benchmark_model (op profiling on: the phone's per-operator times); other formats
        get source "none"."""
        from edgekit.report import Latency

        if self.target is None:
            raise SettingsError(f"{self.uri}: an Android device needs the target it measures for")
        out = []
        for j in artifacts:
            if j.fmt != "tflite":
                out.append(Latency.none(f"benchmark_model runs .tflite files, not {j.fmt}",
                                        device=self.target.description, via=self.uri))
                continue
            p = profile_artifact_adb(j.path, self.target, self.serial, threads, runs, warmup, self.tool, self.adb)
            e, d = p["entries"][0], p["device"]
            self._facts = d
            out.append(Latency.measured(
                e["timing"], device=f"{d.get('manufacturer')} {d.get('model')} ({d.get('soc')}, Android "
                                    f"{d.get('android_version')}) via adb",
                runtime=e["runtime"], threads=e["threads"], device_id=p["device_id"], via=e["via"],
                percentiles=e["timing"]["percentiles"], conditions=e["conditions"], device_facts=d,
                raw={"profile": p}))
        return out

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        raise RuntimeUnavailable(f"{self.uri}: benchmark_model times models but returns no outputs; the artifact "
                                 f"is verified on this machine")
