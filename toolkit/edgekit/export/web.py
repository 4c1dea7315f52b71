"""Browser bundle: a self-contained folder a web developer drops into a site.

    model_fp32_web/
        model.onnx                       the model (ONNX, exported by edgekit.export.onnx)
        model.js                         ES module: load(), run(input) -> Float32Array, benchmark()
        index.html                       demo page (and the page edgekit times in headless Chromium)
        ort.wasm.min.mjs                 onnxruntime-web's WebAssembly-only build,
        ort-wasm-simd-threaded.mjs/.wasm copied from the pinned npm package (package.json)
        manifest.json                    versions, shapes and sha256 of every file
        README.md                        how to serve and use it

The runtime files are copied, never fetched from a CDN, so the page runs offline and always with the runtime the
artifact was verified and timed with. The bundle's layout is written by edgekit.runtimes._web_bundle (devices time
plain .onnx files through the same page).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.runtimes._web_bundle import write_bundle

if TYPE_CHECKING:
    import torch.nn as nn

RUNTIME = "onnxruntime-web"
SUFFIX = "_web"
SIGNATURE_NOTE = "the bundle's model.js feeds one input of one static shape"
FROM_FILE = ("onnx",)  # model-file formats this format is made from without torch (importers.native)


def export(model: nn.Module, example: np.ndarray, path: Path) -> Path:
    """Exports `model` to ONNX and writes the browser bundle folder at `path`."""
    from edgekit.export import onnx as onnx_export

    with tempfile.TemporaryDirectory(prefix="edgekit-web-") as tmp:
        onnx_file = onnx_export.export(model, example, Path(tmp) / "model.onnx")
        return write_bundle(onnx_file, path)


def from_file(src: Path, path: Path) -> Path:
    """The browser bundle of a model that is an ONNX file already (the ONNX-native route)."""
    return write_bundle(src, path)
