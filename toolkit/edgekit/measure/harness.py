#!/usr/bin/env python3
"""edgekit latency harness: times one model file on the machine it runs on and prints one JSON object.

Self-contained on purpose: it is copied to a device (over SSH, or run locally) and needs only the standard library,
numpy and the runtime already installed there (ai-edge-litert / tflite-runtime for .tflite, onnxruntime for .onnx,
the executorch wheel (and the torch it needs) for .pte).

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
INSTALL = {"litert": "python3 -m pip install ai-edge-litert", "onnxruntime": "python3 -m pip install onnxruntime",
           "executorch": "python3 -m pip install executorch==1.5.1"}
# ARM "CPU part" codes (/proc/cpuinfo on ARM boards names no model).
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1",
             "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2"}


class HarnessError(Exception):
    def __init__(self, kind: str, message: str, install: str = "") -> None:
        super().__init__(message)
        self.kind, self.install = kind, install


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


def _random_input(np, shape, dtype):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def load_litert(path: str, threads: int):
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        version = getattr(ai_edge_litert, "__version__", None) or _dist_version("ai-edge-litert")
        name = "litert"
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # the older runtime package, same API

            version, name = _dist_version("tflite-runtime"), "tflite-runtime"
        except ImportError:
            raise HarnessError("missing_runtime", "the TFLite runtime (ai-edge-litert) is not installed",
                               INSTALL["litert"]) from None
    import numpy as np

    try:
        interp = Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
    except Exception as e:  # the runtime's own message says what is wrong with the file
        raise HarnessError("bad_model", f"LiteRT cannot load {os.path.basename(path)}: {str(e)[:200]}") from None
    inp = interp.get_input_details()[0]
    x = _random_input(np, tuple(inp["shape"]), inp["dtype"])

    def run() -> None:
        interp.set_tensor(inp["index"], x)
        interp.invoke()

    return run, f"{name} {version} (xnnpack)", None


def load_onnxruntime(path: str, threads: int, profile_dir: str | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise HarnessError("missing_runtime", "onnxruntime is not installed", INSTALL["onnxruntime"]) from None
    import numpy as np

    def session(profile: bool):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(profile_dir, "ort")
        try:
            return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise HarnessError("bad_model", f"onnxruntime cannot load {os.path.basename(path)}: "
                                            f"{str(e).splitlines()[0][:200]}") from None

    sess = session(False)
    i = sess.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) else 1 for d in i.shape)
    dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
             "tensor(float16)": np.float16, "tensor(int64)": np.int64}.get(i.type, np.float32)
    feed = {i.name: _random_input(np, shape, dtype)}

    def run() -> None:
        sess.run(None, feed)

    def per_op(warmup: int, runs: int) -> list[dict]:
        psess = session(True)
        for _ in range(warmup + runs):
            psess.run(None, feed)
        return ort_per_op(psess.end_profiling(), warmup, runs)

    return run, f"onnxruntime {ort.__version__}", per_op


def pte_problem(path: str) -> str | None:
    """Why a file is no ExecuTorch program (None: it looks like one). The runtime aborts the process on a foreign
    file, so this runs first: the flatbuffer identifier is "ET" + 2 digits at byte 4; the extended header ("eh00")
    states the program and segment sizes, so a truncated file shows by its length."""
    with open(path, "rb") as f:
        head = f.read(40)
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        return "is not an ExecuTorch program (.pte): no 'ET' file identifier"
    if head[8:12] == b"eh00" and len(head) >= 40:
        program, base, segments = (int.from_bytes(head[i:i + 8], "little") for i in (16, 24, 32))
        need = max(program, base + segments if segments else 0)
        if os.path.getsize(path) < need:
            return f"is truncated: {os.path.getsize(path)} bytes, its header says {need}"
    return None


def load_executorch(path: str, threads: int, profile_dir: str):
    # The wheel's C++ extension directly: `executorch.runtime` imports executorch.exir, which needs a dozen more
    # packages a device does not; the extension itself needs only torch (it links libtorch's symbols).
    try:
        import numpy as np
        import torch
        from executorch.extension.pybindings import _C
    except ImportError as e:
        raise HarnessError("missing_runtime", f"the ExecuTorch runtime is not installed ({e})",
                           INSTALL["executorch"]) from None
    problem = pte_problem(path)
    if problem:
        raise HarnessError("bad_model", f"{os.path.basename(path)} {problem}")
    if _C._threadpool_get_thread_count() != threads:
        _C._unsafe_reset_threadpool(threads)

    def program(etdump: bool):
        try:
            prog = _C._load_program(path, enable_etdump=etdump, debug_buffer_size=0,
                                    program_verification=_C.Verification.InternalConsistency)
            return prog, prog.load_method("forward")
        except Exception as e:
            raise HarnessError("bad_model", f"ExecuTorch cannot load {os.path.basename(path)}: "
                                            f"{str(e).splitlines()[0][:200]}") from None

    _, method = program(False)
    shape = tuple(method.method_meta().input_tensor_meta(0).sizes())
    x = torch.from_numpy(_random_input(np, shape, np.float32))

    def run() -> None:
        method([x])

    def per_op(warmup: int, runs: int) -> dict:
        prog, m = program(True)
        for _ in range(warmup + runs):
            m([x])
        out = os.path.join(profile_dir, "run.etdp")
        prog.write_etdump_result_to_file(out, os.path.join(profile_dir, "debug.bin"))
        with open(out, "rb") as f:
            return {"etdump_b64": base64.b64encode(f.read()).decode("ascii"), "etdump_skip_runs": warmup}

    return run, f"executorch {_dist_version('executorch').split('+')[0]} (xnnpack)", per_op


def ort_per_op(trace_path: str, skip_runs: int, runs: int) -> list[dict]:
    """Mean per-inference kernel time of every node from an ONNX Runtime profile, skipping warm-up runs."""
    with open(trace_path) as f:
        events = json.load(f)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[skip_runs:]
    if not windows:
        return []
    start = windows[0][0]
    totals: dict[str, dict] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e["ts"] < start:
            continue
        args = e.get("args", {})
        node = name[: -len("_kernel_time")]
        item = totals.setdefault(node, {"name": node, "type": args.get("op_name", "?"), "us": 0.0,
                                        "signature": _ort_signature(args)})
        item["us"] += e["dur"]
    n = len(windows)
    return [{"name": v["name"], "type": v["type"], "ms": round(v["us"] / 1e3 / n, 5), "signature": v["signature"]}
            for v in totals.values()]


def _ort_signature(args: dict) -> str:
    def shapes(items) -> str:
        out = []
        for d in items or []:
            for dtype, shape in d.items():
                out.append(f"{dtype}{list(shape)}")
        return ",".join(out)

    return f"{args.get('op_name', '?')}|{shapes(args.get('input_type_shape'))}->{shapes(args.get('output_type_shape'))}"


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "unknown"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load(path: str, runtime: str, threads: int, prof_dir: str):
    if not os.path.isfile(path):
        raise HarnessError("bad_args", f"no such model file: {path}")
    fmt = {".tflite": "tflite", ".onnx": "onnx", ".pte": "pte"}.get(os.path.splitext(path)[1], "?")
    runtime = runtime or {"tflite": "litert", "onnx": "onnxruntime", "pte": "executorch"}.get(fmt, "")
    if runtime in ("litert", "tflite-runtime"):
        run, version, per_op_fn = load_litert(path, threads)
        note = "the TFLite Python interpreter offers no per-operator profiler (XNNPACK runs the graph as one op)"
    elif runtime == "onnxruntime":
        run, version, per_op_fn = load_onnxruntime(path, threads, prof_dir)
        note = "ONNX Runtime profiler: mean kernel time per inference"
    elif runtime == "executorch":
        run, version, per_op_fn = load_executorch(path, threads, prof_dir)
        note = "ETDump: the XNNPACK delegate's operator timings (decoded on the host)"
    else:
        raise HarnessError("bad_args", f"runtime '{runtime}' is not one the harness runs "
                                       f"(litert, onnxruntime, executorch)")
    return {"path": path, "fmt": fmt, "runtime_name": runtime, "run": run, "version": version,
            "per_op_fn": per_op_fn, "note": note}


def measure(paths: list[str], runtime: str, threads: int, runs: int, warmup: int, profile_runs: int,
            profile_models: int = -1) -> list[dict]:
    """Times every model; several models are timed interleaved (one run of each per round), so a slow phase of a
    shared machine hits them alike."""
    facts = device_facts()
    before = throttle_state()
    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as prof_dir:
        models = [_load(p, runtime, threads, prof_dir) for p in paths]
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
    import base64

    import numpy as np

    fmt = "tflite" if path.endswith(".tflite") else "onnx"
    runtime = runtime or {"tflite": "litert", "onnx": "onnxruntime"}[fmt]
    try:
        x = np.load(inputs_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise HarnessError("bad_args", f"cannot read the inputs: {e}") from None
    call, shape = _caller(path, runtime, threads)
    batch = shape[0] if shape else 1
    outs = [np.asarray(call(x[i:i + batch].reshape(shape)), np.float32).reshape(batch, -1)
            for i in range(0, len(x) - len(x) % batch, batch)]
    if not outs:
        raise HarnessError("bad_args", f"fewer inputs ({len(x)}) than one batch of {batch}")
    y = np.concatenate(outs)
    return {"ok": True, "harness": HARNESS_VERSION, "artifact": os.path.basename(path), "sha256": sha256(path),
            "outputs_b64": base64.b64encode(y.tobytes()).decode(), "shape": list(y.shape), "dtype": "float32",
            "device": device_facts()}


def _caller(path: str, runtime: str, threads: int):
    """(call(x) -> first output, input shape) for one model."""
    import numpy as np

    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            raise HarnessError("missing_runtime", "onnxruntime is not installed", INSTALL["onnxruntime"]) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        i = sess.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else 1 for d in i.shape)
        return (lambda x: sess.run(None, {i.name: x.astype(np.float32)})[0]), shape
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise HarnessError("missing_runtime", "the TFLite runtime (ai-edge-litert) is not installed",
                               INSTALL["litert"]) from None
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def call(x):
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        return interp.get_tensor(out["index"])

    return call, tuple(int(d) for d in inp["shape"])


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
        if a.facts_only:
            result = {"ok": True, "harness": HARNESS_VERSION, "device": device_facts()}
        elif a.run_inputs:
            result = run_inputs(a.model[0], a.runtime, a.threads, a.run_inputs)
        else:
            if a.runs < 1 or a.warmup < 0 or a.threads < 1:
                raise HarnessError("bad_args", "runs and threads must be at least 1, warmup at least 0")
            results = measure(a.model, a.runtime, a.threads, a.runs, a.warmup, a.profile_runs, a.profile_models)
            result = results[0] if len(results) == 1 else {"ok": True, "harness": HARNESS_VERSION, "results": results}
    except HarnessError as e:
        print(json.dumps({"ok": False, "kind": e.kind, "error": str(e), "install": e.install}))
        return 3
    except ImportError as e:  # numpy missing: the runtimes need it anyway
        print(json.dumps({"ok": False, "kind": "missing_runtime", "error": f"{e}", "install": "python3 -m pip install numpy"}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
