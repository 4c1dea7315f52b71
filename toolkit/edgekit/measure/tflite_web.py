"""TFLite models timed in headless Chromium with the TFLite WebAssembly runtime of @tensorflow/tfjs-tflite (a TFLite
build with XNNPACK, WASM SIMD), side by side in one page: how the sparse artifact is measured in a browser.

The general browser measurement (onnxruntime-web) lives in measure/browser.py; this module only adds the TFLite page.
The npm packages are pinned in the repository's package.json (`make node-deps`).
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import RuntimeUnavailable
from edgekit.targets import project_root

PAGE = Path(__file__).with_name("tflite_web.html")
TIMEOUT_S = 300.0
# (file in node_modules, name the page loads it by)
SCRIPTS = (("@tensorflow/tfjs-core/dist/tf-core.min.js", "tf-core.min.js"),
           ("@tensorflow/tfjs-backend-cpu/dist/tf-backend-cpu.min.js", "tf-backend-cpu.min.js"),
           ("@tensorflow/tfjs-tflite/dist/tf-tflite.min.js", "tf-tflite.min.js"))
WASM_DIR = "@tensorflow/tfjs-tflite/wasm"


def node_modules() -> Path:
    return project_root() / "node_modules"


def package_version(name: str) -> str | None:
    try:
        return json.loads((node_modules() / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def runtime_name() -> str:
    return f"tfjs-tflite {package_version('@tensorflow/tfjs-tflite')} (TFLite WASM, XNNPACK)"


def _stage_page(folder: Path, models: list[Path]) -> list[str]:
    nm = node_modules()
    missing = [src for src, _ in SCRIPTS if not (nm / src).is_file()] + (
        [WASM_DIR] if not (nm / WASM_DIR).is_dir() else [])
    if missing:
        raise RuntimeUnavailable(f"the TFLite web runtime is not installed ({missing[0]} missing in {nm}); "
                                 "run `make node-deps`")
    shutil.copy(PAGE, folder / "index.html")
    for src, name in SCRIPTS:
        shutil.copy(nm / src, folder / name)
    shutil.copytree(nm / WASM_DIR, folder / "wasm")
    names = []
    for i, m in enumerate(models):
        names.append(f"model{i}.tflite")
        shutil.copy(m, folder / names[-1])
    return names


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path, input_bytes: bytes) -> None:
        self.folder, self.input_bytes = folder, input_bytes
        self.result: dict[str, Any] | None = None
        self.done = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".tflite": "application/octet-stream"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(args[2].folder), **kwargs)

    def end_headers(self) -> None:
        # Cross-origin isolation lets the runtime pick its threaded WASM build when more than one thread is asked.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.startswith("/__input.bin"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(self.server.input_bytes)))
            self.end_headers()
            self.wfile.write(self.server.input_bytes)
            return
        super().do_GET()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            self.server.result = json.loads(body)
        except json.JSONDecodeError:
            self.server.result = {"error": "the page posted invalid JSON"}
        self.send_response(204)
        self.end_headers()
        self.server.done.set()

    def log_message(self, *args: Any) -> None:
        pass


def time_tflite_in_chromium(models: list[Path], x: np.ndarray, warmup: int = 5, runs: int = 50, threads: int = 1,
                            timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Loads every model in one headless Chromium page and times them interleaved.

    Args:
        models: .tflite files with the same input.
        x: the input batch (the models' input shape).
        warmup: untimed runs per model first.
        runs: timed rounds; each round runs every model once.
        threads: numThreads for the TFLite web runtime.

    Returns:
        {"samples_ms": [[...] per model], "outputs": [[...] per model], "user_agent", "chromium", "runtime", ...}.
    """
    from edgekit.measure.browser import CHROMIUM_FLAGS, chromium_binary, chromium_version

    binary = chromium_binary()
    if binary is None:
        raise RuntimeUnavailable("headless Chromium is not installed (Debian package `chromium`; `make system-deps`)")
    with tempfile.TemporaryDirectory(prefix="edgekit-tflite-web-") as d, \
            tempfile.TemporaryDirectory(prefix="edgekit-chromium-") as profile:
        folder = Path(d)
        names = _stage_page(folder, [Path(m) for m in models])
        server = _Server(folder, np.ascontiguousarray(x, "<f4").tobytes())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = (f"http://127.0.0.1:{server.server_address[1]}/index.html?models={','.join(names)}"
               f"&input=/__input.bin&report=/__result&warmup={warmup}&runs={runs}&threads={threads}")
        proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            finished = server.done.wait(timeout)
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            server.shutdown()
            server.server_close()
    if not finished:
        tail = " | ".join(line for line in (err or "").splitlines() if "dbus" not in line.lower())[-300:]
        raise RuntimeUnavailable(f"headless Chromium did not report a result within {timeout:.0f} s ({tail})")
    result = server.result or {}
    if result.get("error"):
        raise RuntimeUnavailable(f"the TFLite web runtime failed in Chromium: {result['error']}")
    return {**result, "chromium": chromium_version(binary), "runtime": runtime_name()}
