#!/usr/bin/env python3
"""edgekit latency harness: times one model file on the machine it runs on and prints one JSON object.

Self-contained on purpose: it is copied to a device (over SSH, or run locally) with the runtime loaders it imports
(edgekit/runtimes/_portable.py, copied beside it as edgekit_portable.py) and needs only the standard library, numpy
and the runtime already installed there (ai-edge-litert / tflite-runtime for .tflite, onnxruntime for .onnx, the
executorch wheel (and the torch it needs) for .pte). `--facts-only` needs neither (it is streamed to the device's
Python on its own).

    python3 harness.py MODEL [MODEL ...] [--runtime litert|onnxruntime|executorch] [--threads 1] [--runs 50] [--warmup 5] [--profile-runs 10]
    [--profile-models K]
    python3 harness.py MODEL --run-inputs INPUTS.npy     # run the model on the inputs; print its outputs (base64)

Output (stdout, one line): {"ok": true, "harness": 1, "artifact", "sha256", "format", "runtime", "runtime_name",
"threads", "timing": {"p50_ms", "p90_ms", "min_ms", "mean_ms", "runs", "warmup"}, "per_op": [{"name", "type", "ms",
"signature"}], "per_op_note", ["etdump_b64", "etdump_skip_runs"] (ExecuTorch: the raw ETDump, decoded by the host), "device": {facts}, "conditions": {"before": {...}, "after": {...}, "throttling"}}; with several models: {"ok": true, "results": [...]}.
On failure: {"ok": false, "kind": "missing_runtime" | "bad_model" | "bad_args" | "error", "error": "...",
"install": "pip command"} and exit status 3.
"""

from __future__ import annotations

import argparse
import base64
import functools
import glob
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HARNESS_VERSION = 1
# ARM "CPU part" codes (/proc/cpuinfo on ARM boards names no model).
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1",
             "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2"}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    parts = set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        fields.setdefault(key, val)
        if key == "CPU part":
            parts.add(val.lower())
    if fields.get("model name"):
        return fields["model name"]
    names = sorted({ARM_PARTS.get(p, f"ARM part {p}") for p in parts})
    if names:
        return " + ".join(names)
    return fields.get("Hardware") or fields.get("cpu model") or platform.processor() or platform.machine()


def temperature_c() -> float | None:
    """Highest thermal-zone temperature (the SoC on boards), None where none is readable."""
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        raw = _read(path)
        if raw and raw.lstrip("-").isdigit():
            temps.append(int(raw) / 1000.0)
    return max(temps) if temps else None


def throttle_state() -> dict:
    """What the device says about throttling: vcgencmd on a Raspberry Pi, kernel throttle counters on x86."""
    out: dict = {}
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd:
        try:
            r = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5)
            value = int(r.stdout.strip().split("=")[-1], 16)
            # bit 1: ARM frequency capped, bit 2: currently throttled, bit 3: soft temperature limit.
            out["vcgencmd_throttled"] = hex(value)
            out["throttled_now"] = bool(value & 0x6 or value & 0x8)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    counts = 0
    found = False
    for path in glob.glob("/sys/devices/system/cpu/cpu*/thermal_throttle/*_throttle_count"):
        raw = _read(path)
        if raw and raw.isdigit():
            counts += int(raw)
            found = True
    if found:
        out["throttle_count"] = counts
    cur, top = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"), _read(
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq")
    if cur and top and cur.isdigit() and top.isdigit():
        out["freq_khz"], out["max_freq_khz"] = int(cur), int(top)
    out["temperature_c"] = temperature_c()
    load = (_read("/proc/loadavg") or "").split()
    if len(load) >= 3:
        out["loadavg"] = [float(v) for v in load[:3]]  # other work on the device skews timings: keep it on record
    return out


def emulated(arch: str, cpu: str) -> bool:
    """True under an emulator (qemu-user shows the host's x86 CPU to an ARM program)."""
    if os.environ.get("EDGEKIT_EMULATED") == "1":
        return True
    # qemu-user rewrites some of /proc for the guest but not /sys: the kernel still says what the real CPU is.
    modalias = _read("/sys/devices/system/cpu/modalias") or ""
    x86 = any(v in cpu for v in ("Intel", "AMD", "EPYC", "Xeon", "QEMU")) or modalias.startswith("cpu:type:x86")
    arm = modalias.startswith(("cpu:type:aarch64", "cpu:type:arm"))
    return (arch.startswith(("aarch64", "arm")) and x86) or (arch in ("x86_64", "i686") and arm)


def device_facts() -> dict:
    u = os.uname()
    arch = platform.machine()
    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "hostname": u.nodename, "arch": arch, "cpu": cpu, "cores": os.cpu_count() or 1, "usable_cores": usable,
        "uname": " ".join([u.sysname, u.nodename, u.release, u.version, u.machine]),
        "model": _read("/proc/device-tree/model"),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "python": platform.python_version(), "emulated": emulated(arch, cpu), "runtimes": installed_runtimes(),
    }


def installed_runtimes() -> list:
    """The runtimes this Python can import (found, not imported: reading facts stays fast)."""
    import importlib.util

    found = {"litert": ("ai_edge_litert", "tflite_runtime"), "onnxruntime": ("onnxruntime",)}
    out = []
    for name, modules in found.items():
        for mod in modules:
            try:
                if importlib.util.find_spec(mod) is not None:
                    out.append(name)
                    break
            except (ImportError, ValueError):
                pass
    return out


def _percentile(sorted_ms: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so the host and device agree."""
    pos = (len(sorted_ms) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarise(samples_s: list[float], warmup: int) -> dict:
    ms = sorted(s * 1e3 for s in samples_s)
    return {"p50_ms": round(_percentile(ms, 50), 4), "p90_ms": round(_percentile(ms, 90), 4),
            "min_ms": round(ms[0], 4), "mean_ms": round(statistics.fmean(ms), 4), "runs": len(ms), "warmup": warmup}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.cache
def portable():
    """The runtime loaders (loaded once: its HarnessError is the one main() catches): beside this file on a device (copied there with it), else edgekit's own."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "edgekit_portable.py"), os.path.join(here, "..", "runtimes", "_portable.py")):
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("edgekit_portable", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise ImportError(f"edgekit_portable.py is missing beside {os.path.basename(__file__)}")


def measure(paths: list[str], runtime: str, threads: int, runs: int, warmup: int, profile_runs: int,
            profile_models: int = -1) -> list[dict]:
    """Times every model; several models are timed interleaved (one run of each per round), so a slow phase of a
    shared machine hits them alike."""
    facts = device_facts()
    before = throttle_state()
    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as prof_dir:
        models = [portable()._load(p, runtime, threads, prof_dir) for p in paths]
        for m in models:
            for _ in range(warmup):
                m["run"]()
        samples: list[list[float]] = [[] for _ in models]
        for _ in range(runs):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m["run"]()
                samples[i].append(time.perf_counter() - t0)
        after = throttle_state()
        per_ops = [m["per_op_fn"](warmup, profile_runs)
                   if m["per_op_fn"] and profile_runs > 0 and (profile_models < 0 or i < profile_models) else []
                   for i, m in enumerate(models)]
    throttling = None
    if "throttled_now" in after:
        throttling = after["throttled_now"]
    elif "throttle_count" in after and "throttle_count" in before:
        throttling = after["throttle_count"] > before["throttle_count"]
    conditions = {"before": before, "after": after, "throttling": throttling, "governor": facts["governor"],
                  "temperature_c": after.get("temperature_c")}
    # A profiler returns operator rows, or (ExecuTorch) raw data the host decodes: {"etdump_b64", ...}.
    return [{"ok": True, "harness": HARNESS_VERSION, "artifact": os.path.basename(m["path"]),
             "sha256": sha256(m["path"]), "format": m["fmt"], "runtime": m["version"],
             "runtime_name": m["runtime_name"], "threads": threads, "timing": summarise(s, warmup),
             "per_op": ops if isinstance(ops, list) else [], **(ops if isinstance(ops, dict) else {}),
             "per_op_note": m["note"], "device": facts, "conditions": conditions}
            for m, s, ops in zip(models, samples, per_ops)]  # noqa: B905 (the device may run Python < 3.10)


def run_inputs(path: str, runtime: str, threads: int, inputs_path: str) -> dict:
    """Runs one model on every batch of an .npy file (batches of the model's input shape); returns its first
    output, float32, base64-encoded, so the host can compare what the device computes with what it verified."""
    import numpy as np

    fmt = "tflite" if path.endswith(".tflite") else "onnx"
    runtime = runtime or {"tflite": "litert", "onnx": "onnxruntime"}[fmt]
    rt = portable()
    try:
        x = np.load(inputs_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise rt.HarnessError("bad_args", f"cannot read the inputs: {e}") from None
    call, shape = rt._caller(path, runtime, threads)
    batch = shape[0] if shape else 1
    outs = [np.asarray(call(x[i:i + batch].reshape(shape)), np.float32).reshape(batch, -1)
            for i in range(0, len(x) - len(x) % batch, batch)]
    if not outs:
        raise rt.HarnessError("bad_args", f"fewer inputs ({len(x)}) than one batch of {batch}")
    y = np.concatenate(outs)
    return {"ok": True, "harness": HARNESS_VERSION, "artifact": os.path.basename(path), "sha256": sha256(path),
            "outputs_b64": base64.b64encode(y.tobytes()).decode(), "shape": list(y.shape), "dtype": "float32",
            "device": device_facts()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="time one model file and print JSON")
    p.add_argument("model", nargs="+", help="model file(s); several are timed interleaved")
    p.add_argument("--runtime", default="", help="litert, onnxruntime or executorch (default: from the suffix)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile-runs", type=int, default=10, help="extra profiled runs for per-operator times (0: off)")
    p.add_argument("--profile-models", type=int, default=-1, help="profile only the first K models (-1: all)")
    p.add_argument("--facts-only", action="store_true", help="print the device facts and exit")
    p.add_argument("--run-inputs", default="", help="run the model on these inputs (.npy) and print its outputs")
    a = p.parse_args(argv)
    try:
        # a device needs no runtime for its facts: the loaders are imported only to time or run a model
        harness_error = () if a.facts_only else (portable().HarnessError,)
    except ImportError as e:
        print(json.dumps({"ok": False, "kind": "error", "error": str(e), "install": ""}))
        return 3
    try:
        if a.facts_only:
            result = {"ok": True, "harness": HARNESS_VERSION, "device": device_facts()}
        elif a.run_inputs:
            result = run_inputs(a.model[0], a.runtime, a.threads, a.run_inputs)
        else:
            if a.runs < 1 or a.warmup < 0 or a.threads < 1:
                raise harness_error[0]("bad_args", "runs and threads must be at least 1, warmup at least 0")
            results = measure(a.model, a.runtime, a.threads, a.runs, a.warmup, a.profile_runs, a.profile_models)
            result = results[0] if len(results) == 1 else {"ok": True, "harness": HARNESS_VERSION, "results": results}
    except harness_error as e:
        print(json.dumps({"ok": False, "kind": e.kind, "error": str(e), "install": e.install}))
        return 3
    except ImportError as e:  # numpy missing: the runtimes need it anyway
        print(json.dumps({"ok": False, "kind": "missing_runtime", "error": f"{e}", "install": "python3 -m pip install numpy"}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
