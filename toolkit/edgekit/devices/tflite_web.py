"""TFLite models timed in headless Chromium with the TFLite WebAssembly runtime of @tensorflow/tfjs-tflite (a TFLite
build with XNNPACK, WASM SIMD), side by side in one page: how the sparse artifact is measured in a browser.

The general browser measurement (onnxruntime-web) lives in measure/browser.py; this module only adds the TFLite page
(served and opened by measure/_web_server.py, shared with browser.py).
The npm packages are pinned in the repository's package.json (`make node-deps`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.devices._web_server import (
    INPUT_PATH,
    RESULT_PATH,
    chromium_version,
    page_result,
    require_chromium,
)
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
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="edgekit-tflite-web-") as d:
        folder = Path(d)
        names = _stage_page(folder, [Path(m) for m in models])
        query = (f"models={','.join(names)}&input={INPUT_PATH}&report={RESULT_PATH}&warmup={warmup}&runs={runs}"
                 f"&threads={threads}")
        result = page_result(binary, folder, query, x, timeout, "TFLite web runtime")
    return {**result, "chromium": chromium_version(binary), "runtime": runtime_name()}
