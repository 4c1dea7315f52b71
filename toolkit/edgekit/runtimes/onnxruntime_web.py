"""onnxruntime-web (WebAssembly backend) run in Node: the browser target's runtime, usable from Python.

One Node process per loaded model stays alive and is driven over stdin/stdout (JSON lines, tensors as base64
float32), so verification and timing pay Node's start-up and the WebAssembly compile once, not per call. The npm
package is pinned in the repository's package.json and installed by `make node-deps` (`npm ci`).

An artifact is either an .onnx file or a browser bundle folder written by edgekit.export.web (its model.onnx).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import weakref
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, RuntimeUnavailable
from edgekit.targets import project_root

PACKAGE = "onnxruntime-web"
RUNNER_JS = Path(__file__).with_name("ort_node_runner.js")
LOAD_TIMEOUT_S = 120.0
MARK = "@@edgekit@@ "  # prefix of the runner's replies on stdout (see ort_node_runner.js)


def node_modules() -> Path:
    """The project's node_modules (override with EDGEKIT_NODE_MODULES)."""
    env = os.environ.get("EDGEKIT_NODE_MODULES")
    return Path(env) if env else project_root() / "node_modules"


def package_dir() -> Path:
    """node_modules/onnxruntime-web, or a one-line error saying how to install it."""
    d = node_modules() / PACKAGE
    if not (d / "package.json").is_file():
        raise RuntimeUnavailable(f"{PACKAGE} is not installed in {node_modules()}; run `make node-deps` "
                                 f"(npm ci in {project_root()})")
    return d


@cache
def package_version() -> str:
    return json.loads((package_dir() / "package.json").read_text())["version"]


def node_binary() -> str:
    node = os.environ.get("EDGEKIT_NODE") or shutil.which("node")
    if not node:
        raise RuntimeUnavailable("Node.js is not installed (needed to run onnxruntime-web); install node >= 18")
    return node


def model_file(path: Path) -> Path:
    """The ONNX file of an artifact: the file itself, or model.onnx inside a browser bundle folder."""
    path = Path(path)
    f = path / "model.onnx" if path.is_dir() else path
    if not f.is_file():
        raise InputError(f"{path}: no ONNX model found (expected an .onnx file or a web bundle with model.onnx)")
    return f


class NodeOrtWebRunner:
    """A model loaded into onnxruntime-web inside a kept-alive Node process."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = model_file(path)
        package_dir()
        env = {**os.environ, "NODE_PATH": str(node_modules())}
        self._proc = subprocess.Popen([node_binary(), str(RUNNER_JS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        # The reader threads and the finaliser hold the process and queues, never self, so a dropped runner is
        # collected and its Node process ends.
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=_keep_tail, args=(self._proc.stderr, self._stderr), daemon=True).start()
        self._finalizer = weakref.finalize(self, _stop, self._proc)
        info = self._call({"cmd": "load", "path": str(self.path), "threads": int(threads)}, LOAD_TIMEOUT_S,
                          what=f"load {self.path.name}")
        self.threads = threads
        self.input_name = info["input_name"]
        self.input_shape = tuple(int(d) for d in info["input_shape"])
        self.versions: dict[str, str] = info["versions"]
        self.runtime = f"{PACKAGE} {self.versions['onnxruntime_web']} (wasm, SIMD128)"
        self.engine = f"node {self.versions['node']}"

    def _call(self, req: dict[str, Any], timeout: float, what: str) -> dict[str, Any]:
        if self._proc.poll() is not None:
            raise RuntimeUnavailable(f"{PACKAGE} Node process exited ({self._tail()})")
        self.printed: list[str] = []  # other stdout lines during this call (e.g. the profiler's trace)
        try:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            while (line := self._lines.get(timeout=timeout)) is not None and not line.startswith(MARK):
                self.printed.append(line)
        except (BrokenPipeError, OSError):
            line = None
        except queue.Empty:
            self.close()
            raise RuntimeUnavailable(f"{PACKAGE} in Node: {what} took longer than {timeout:.0f} s") from None
        if line is None:
            raise RuntimeUnavailable(f"{PACKAGE} Node process died during {what} ({self._tail()})")
        reply = json.loads(line[len(MARK):])
        if not reply.get("ok"):
            raise InputError(f"{PACKAGE} cannot {what}: {reply.get('error')}")
        return reply

    def _tail(self) -> str:
        return "; ".join(self._stderr[-3:]) or f"exit code {self._proc.poll()}"

    @staticmethod
    def _encode(x: np.ndarray) -> dict[str, Any]:
        x = np.ascontiguousarray(x, dtype="<f4")
        return {"data": base64.b64encode(x.tobytes()).decode(), "shape": list(x.shape)}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.input_shape:
            x = np.asarray(x, np.float32).reshape(self.input_shape)
        reply = self._call({"cmd": "run", **self._encode(x)}, 60.0, what="run")
        return np.frombuffer(base64.b64decode(reply["data"]), dtype="<f4").reshape(reply["shape"]).copy()

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """The first output (the bundle's page returns one)."""
        return [self(x)]

    def time(self, x: np.ndarray, warmup: int, runs: int, min_warmup_ms: float = 1000.0) -> dict[str, Any]:
        """Times `runs` inferences inside Node (no IPC in the timed region) after warm-up.

        Returns:
            {"samples_ms": [...], "warmup_runs": n}.
        """
        if self.input_shape:
            x = np.asarray(x, np.float32).reshape(self.input_shape)
        req = {"cmd": "time", **self._encode(x), "warmup": warmup, "runs": runs, "min_warmup_ms": min_warmup_ms}
        return self._call(req, 600.0, what="time")

    def per_op(self, x: np.ndarray, warmup: int = 2, runs: int = 10) -> list[dict[str, Any]]:
        """Per-operator mean ms per inference from ONNX Runtime's own profiler (in a second, profiling session),
        in the common profile format with ORT kernel signatures."""
        import tempfile

        from edgekit.runtimes._portable import ort_per_op

        if self.input_shape:
            x = np.asarray(x, np.float32).reshape(self.input_shape)
        self._call({"cmd": "profile", **self._encode(x), "warmup": warmup, "runs": runs}, 600.0, what="profile")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write("".join(self.printed))
        try:
            return ort_per_op(f.name, warmup, runs)
        except (ValueError, KeyError):
            return []  # a trace this version cannot read: per-op times are optional in a profile
        finally:
            os.unlink(f.name)

    def close(self) -> None:
        self._finalizer()


def _pump(stream: Any, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _keep_tail(stream: Any, tail: list[str]) -> None:
    for line in stream:
        tail.append(line.rstrip())
        del tail[:-20]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def load(path: Path, threads: int) -> NodeOrtWebRunner:
    return NodeOrtWebRunner(path, threads)
