"""LiteRT (TFLite) interpreter from ai-edge-litert, with the default XNNPACK delegate.

Inputs and outputs are the file's signature def's, by name and in its order, when it has one (what a client looks
up), else the subgraph's tensors. A dynamic dimension (-1 in the file's shape signature) takes the size of the data:
the input is resized (`resize_tensor_input`) and the tensors allocated again when the shape changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, first_line
from edgekit.signature import tflite_io


class LiteRTRunner:
    def __init__(self, path: Path, threads: int) -> None:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as e:
            raise InputError(f"LiteRT cannot load {path}: {first_line(e, 200)}") from None
        self.ins, self.outs = tflite_io(self.interpreter)
        self.inp, self.out = self.ins[0][1], self.outs[0][1]
        self.input_names = [n for n, _ in self.ins]
        self.output_names = [n for n, _ in self.outs]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])
        sig = self.inp.get("shape_signature")
        self.dynamic = sig is not None and any(int(d) < 0 for d in sig)
        self.batch = None if sig is not None and len(sig) and int(sig[0]) < 0 else (
            self.input_shape[0] if self.input_shape else 1)
        version = getattr(ai_edge_litert, "__version__", None)
        if version is None:
            from importlib.metadata import version as pkg_version

            version = pkg_version("ai-edge-litert")
        self.runtime = f"litert {version} (xnnpack)"

    def _set(self, detail: dict[str, Any], x: np.ndarray) -> None:
        x = np.asarray(x)
        scale, zero = detail.get("quantization", (0.0, 0))
        if detail["dtype"] != np.float32 and scale and x.dtype.kind == "f":
            x = np.clip(np.round(x / scale + zero), np.iinfo(detail["dtype"]).min,
                        np.iinfo(detail["dtype"]).max).astype(detail["dtype"])
        x = np.ascontiguousarray(x, detail["dtype"])
        if tuple(x.shape) != tuple(self.interpreter.get_tensor(detail["index"]).shape):
            self.interpreter.resize_tensor_input(detail["index"], list(x.shape), strict=True)
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(detail["index"], x)

    def outputs(self, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        if isinstance(x, dict):
            missing = [n for n in self.input_names if n not in x]
            if missing:
                raise InputError(f"LiteRT: no data for inputs {missing}")
            for name, detail in self.ins:
                self._set(detail, x[name])
        else:
            self._set(self.inp, np.asarray(x, np.float32) if np.asarray(x).dtype.kind == "f" else x)
        self.interpreter.invoke()
        out = []
        for _, detail in self.outs:
            y = self.interpreter.get_tensor(detail["index"])
            scale, zero = detail.get("quantization", (0.0, 0))
            if detail["dtype"] != np.float32 and scale:
                y = (y.astype(np.float32) - zero) * scale
            out.append(np.array(y))
        return out

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        return self.outputs(x)[0]


def load(path: Path, threads: int) -> LiteRTRunner:
    return LiteRTRunner(path, threads)
