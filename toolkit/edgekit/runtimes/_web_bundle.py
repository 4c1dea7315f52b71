"""The browser bundle's layout: the model, onnxruntime-web's WebAssembly files, `model.js`, `index.html`,
`manifest.json` and a README in one folder (see edgekit.export.web). Written here, below both the exporter and the
devices: the Chromium device times a plain .onnx file through the very page a bundle carries.

The runtime files are copied from the pinned npm package (package.json), never fetched from a CDN.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, first_line
from edgekit.fileio import sha256_file
from edgekit.version import __version__

RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
_TEMPLATES = Path(__file__).resolve().parent  # web_model.js, web_index.html (package data)


def write_bundle(onnx_file: Path, folder: Path, threads: int = 1) -> Path:
    """Writes a browser bundle for an existing ONNX file (atomically: a half-written folder never appears).

    Args:
        onnx_file: a self-contained .onnx file (no external data).
        folder: the bundle folder to create or replace.
        threads: WebAssembly threads the page asks for (used only on cross-origin isolated pages).
    """
    from edgekit.runtimes.onnxruntime_web import package_dir, package_version

    onnx_file, folder = Path(onnx_file), Path(folder)
    dist = package_dir() / "dist"
    missing = [f for f in RUNTIME_FILES if not (dist / f).is_file()]
    if missing:
        raise InputError(f"onnxruntime-web {package_version()} lacks {missing}; reinstall it (`make node-deps`)")
    io = _io_facts(onnx_file)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a web server must be able to read the bundle
    try:
        shutil.copyfile(onnx_file, tmp / "model.onnx")
        for f in RUNTIME_FILES:
            shutil.copyfile(dist / f, tmp / f)
        config = {"modelFile": "model.onnx", "inputName": io["input_name"], "inputShape": io["input_shape"],
                  "inputSize": int(np.prod(io["input_shape"])), "outputName": io["output_name"],
                  "outputShape": io["output_shape"], "threads": threads}
        js = (_TEMPLATES / "web_model.js").read_text().replace("/*EDGEKIT_CONFIG*/ {}", json.dumps(config))
        (tmp / "model.js").write_text(js)
        shutil.copyfile(_TEMPLATES / "web_index.html", tmp / "index.html")
        (tmp / "README.md").write_text(_readme(config, package_version()))
        manifest = {"edgekit_version": __version__, "runtime": {"package": "onnxruntime-web",
                                                                "version": package_version(), "backend": "wasm"},
                    "model": config, "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _io_facts(onnx_file: Path) -> dict[str, Any]:
    import onnx

    try:
        m = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as e:
        raise InputError(f"{onnx_file} is not a readable ONNX model: {first_line(e, 200)}") from None
    init = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in init]
    if len(inputs) != 1 or not m.graph.output:
        raise InputError(f"{onnx_file}: a web bundle needs exactly one input, got {len(inputs)}")

    def shape(v: Any) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]

    return {"input_name": inputs[0].name, "input_shape": shape(inputs[0]), "output_name": m.graph.output[0].name,
            "output_shape": shape(m.graph.output[0])}


def _readme(config: dict[str, Any], version: str) -> str:
    shape = "×".join(map(str, config["inputShape"]))
    return f"""# Model for the browser (written by edgekit)

This folder is self-contained: the model (`model.onnx`), onnxruntime-web {version} (WebAssembly backend; the
files `ort.wasm.min.mjs`, `ort-wasm-simd-threaded.mjs`, `ort-wasm-simd-threaded.wasm`), an ES module `model.js`
and a demo page `index.html`. Nothing is loaded from a CDN.

## Try it

Serve the folder over HTTP (ES modules and WebAssembly do not load from `file://`), e.g.
`python3 -m http.server -d . 8000`, then open http://localhost:8000/index.html.

## Use it in a site

Copy the folder anywhere under your site's static files and import the module:

```js
import {{ run, config, benchmark }} from "./model_web/model.js";

const input = new Float32Array(config.inputSize);   // {config['inputSize']} values, shape {shape}, row-major
const output = await run(input);                     // Float32Array, shape {config['outputShape']}
```

- `run(input)` accepts a `Float32Array`, a plain array or an `ort.Tensor`; the first call creates the session.
- `load({{threads}})` creates the session ahead of time (e.g. while the page loads).
- `benchmark({{warmup, runs}})` times the model in the visitor's browser (p50/p90 in ms).

## Serving notes

- Serve `.wasm` as `application/wasm` and `.mjs` as `text/javascript` (most servers do).
- One thread is used unless the page is cross-origin isolated (headers `Cross-Origin-Opener-Policy: same-origin`
  and `Cross-Origin-Embedder-Policy: require-corp`); then `config.threads` threads.
- `manifest.json` lists every file's sha256 and the runtime version this model was verified and timed with.
"""
