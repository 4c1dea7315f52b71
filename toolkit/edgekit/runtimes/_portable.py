"""Runtime code that runs on a device: load a model file into LiteRT, ONNX Runtime or ExecuTorch, run it, and read
the runtime's own per-operator profile. Standard library, numpy and the runtime only (no edgekit import): the device
harness (edgekit/devices/harness.py) imports this file from beside itself, where it is copied as
edgekit_portable.py, and edgekit's runtime modules import it as edgekit.runtimes._portable.

Failures are HarnessError(kind, message, install): kind "missing_runtime" (with the pip command), "bad_model",
"bad_args".
"""

from __future__ import annotations

import base64
import json
import os

INSTALL = {"litert": "python3 -m pip install ai-edge-litert", "onnxruntime": "python3 -m pip install onnxruntime",
           "executorch": "python3 -m pip install executorch==1.5.1"}


class HarnessError(Exception):
    def __init__(self, kind: str, message: str, install: str = "") -> None:
        super().__init__(message)
        self.kind, self.install = kind, install


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
