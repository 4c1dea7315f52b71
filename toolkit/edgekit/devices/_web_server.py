"""One page in headless Chromium, served from 127.0.0.1: shared by the onnxruntime-web (browser.py) and the
tfjs-tflite (tflite_web.py) measurements.

A throw-away HTTP server serves a staged folder with cross-origin isolation headers, the input tensor at INPUT_PATH,
and receives the page's JSON result on POST RESULT_PATH/<token>, a random token per run that only the page is told
(any other local process posting a result gets 403); Chromium runs with a fresh profile and no network services, in
a process group of its own that is stopped as a whole when the run ends, is interrupted, or edgekit is killed.
The pages take both paths from their query (`input=`, `report=`); run_page puts the run's result path there.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import RuntimeUnavailable

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio")
INPUT_PATH = "/__edgekit/input.bin"
RESULT_PATH = "/__edgekit/result"


def chromium_binary() -> str | None:
    """Chromium to run (EDGEKIT_CHROMIUM overrides), or None when none is installed."""
    env = os.environ.get("EDGEKIT_CHROMIUM")
    if env:
        return env
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)


def require_chromium() -> str:
    """chromium_binary(), or a one-line error saying how to install it."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeUnavailable("headless Chromium is not installed (Debian package `chromium`; `make system-deps`)")
    return binary


def page_result(binary: str, folder: Path, query: str, x: np.ndarray, timeout: float, what: str) -> dict[str, Any]:
    """run_page, then the page's posted result; a one-line error when it posted nothing or reported a failure.

    Args:
        what: what ran in the page, for the error ("page", "TFLite web runtime").
    """
    page = run_page(binary, folder, query, x, timeout)
    if not page.finished:
        raise RuntimeUnavailable(f"headless Chromium ({binary}) reported no result (exit code {page.returncode}, "
                                 f"limit {timeout:.0f} s): {page.stderr_tail or 'no output'}")
    result = page.result or {}
    if result.get("error"):
        raise RuntimeUnavailable(f"the {what} failed in Chromium: {result['error']}")
    return result


@functools.cache
def chromium_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"(\d+\.\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip()[:40] or "unknown"


class PageServer(http.server.ThreadingHTTPServer):
    """Serves one folder and the input tensor; receives the page's result on POST RESULT_PATH."""

    daemon_threads = True

    def __init__(self, folder: Path, input_bytes: bytes) -> None:
        self.folder, self.input_bytes = folder, input_bytes
        self.result: dict[str, Any] | None = None
        self.done = threading.Event()
        self.token = secrets.token_urlsafe(24)
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def result_path(self) -> str:
        """Where this run's page posts its result; results elsewhere are refused."""
        return f"{RESULT_PATH}/{self.token}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: PageServer
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".js": "text/javascript", ".onnx": "application/octet-stream",
                      ".tflite": "application/octet-stream"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(args[2].folder), **kwargs)

    def end_headers(self) -> None:
        # Cross-origin isolation lets the WebAssembly runtimes use threads when more than one is asked for.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.startswith(INPUT_PATH):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(self.server.input_bytes)))
            self.end_headers()
            self.wfile.write(self.server.input_bytes)
            return
        super().do_GET()

    def do_POST(self) -> None:
        if not secrets.compare_digest(self.path.split("?", 1)[0], self.server.result_path):
            self.send_error(403)
            return
        body = self.rfile.read(min(int(self.headers.get("Content-Length", 0) or 0), 64 << 20))
        try:
            self.server.result = json.loads(body)
        except json.JSONDecodeError:
            self.server.result = {"error": "the page posted invalid JSON"}
        self.server.done.set()  # before the reply: whoever sees the reply also sees the result as done
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # the page's requests are not the user's business
        pass


@dataclass(frozen=True)
class PageRun:
    """What one page run left: the posted result (None when the page posted nothing) and Chromium's exit."""

    result: dict[str, Any] | None
    finished: bool
    returncode: int | None
    stderr_tail: str


def run_page(binary: str, folder: Path, query: str, x: np.ndarray, timeout: float) -> PageRun:
    """Serves `folder`, opens its index.html?`query` in headless Chromium and waits for the page's POST.

    Args:
        binary: the Chromium executable (chromium_binary()).
        folder: the staged page; index.html plus whatever it loads.
        query: the page's query string without "?"; it should pass input=INPUT_PATH and report=RESULT_PATH.
        x: the input tensor, served as little-endian float32 at INPUT_PATH.
        timeout: seconds to wait for the result (less when Chromium exits without posting one).
    """
    server = PageServer(Path(folder), np.ascontiguousarray(x, "<f4").tobytes())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    query = "&".join([p for p in query.split("&") if p and not p.startswith("report=")]
                     + [f"report={server.result_path}"])
    err = ""
    with tempfile.TemporaryDirectory(prefix="edgekit-chromium-") as profile:
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"{server.url}/index.html?{query}"]
        # Its own session (process group): renderers and zygotes go with it, and a Ctrl-C meant for edgekit does not
        # reach it half-way; the kernel also stops it if edgekit dies without cleaning up (SIGKILL).
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=_die_with_parent_fn())
        try:
            finished = _wait(server.done, proc, timeout)
        finally:
            err = _stop_group(proc)
            server.shutdown()
            server.server_close()
    tail = " | ".join(line for line in (err or "").splitlines() if "dbus" not in line.lower())[-300:]
    return PageRun(server.result, finished, proc.returncode, tail)


@functools.cache
def _prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent_fn() -> Any:
    """A preexec function asking Linux to SIGKILL the child when edgekit's process dies (None where unsupported).

    prctl is looked up here, in the parent: between fork and exec the child only makes that one call.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_group(proc: subprocess.Popen) -> str:
    """Stops the browser's whole process group (TERM, then KILL); returns its stderr."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
        _, err = proc.communicate()
    signal_group(signal.SIGKILL)  # children that ignored TERM or outlived the browser
    return err or ""


def _wait(done: threading.Event, proc: subprocess.Popen, timeout: float) -> bool:
    """Waits for the page's result; gives up early when Chromium has exited without posting one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done.wait(0.25):
            return True
        if proc.poll() is not None:
            return done.wait(1.0)  # a result posted just before exit still counts
    return done.is_set()
