"""LiteRT (TFLite) interpreter from ai-edge-litert, with the default XNNPACK delegate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import InputError, first_line


class LiteRTRunner:
    def __init__(self, path: Path, threads: int) -> None:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as e:
            raise InputError(f"LiteRT cannot load {path}: {first_line(e, 200)}") from None
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])
        version = getattr(ai_edge_litert, "__version__", None)
        if version is None:
            from importlib.metadata import version as pkg_version

            version = pkg_version("ai-edge-litert")
        self.runtime = f"litert {version} (xnnpack)"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        scale, zero = self.inp.get("quantization", (0.0, 0))
        if self.inp["dtype"] != np.float32 and scale:
            x = np.clip(np.round(x / scale + zero), np.iinfo(self.inp["dtype"]).min,
                        np.iinfo(self.inp["dtype"]).max).astype(self.inp["dtype"])
        self.interpreter.set_tensor(self.inp["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.out["index"])
        scale, zero = self.out.get("quantization", (0.0, 0))
        if self.out["dtype"] != np.float32 and scale:
            y = (y.astype(np.float32) - zero) * scale
        return y


def load(path: Path, threads: int) -> LiteRTRunner:
    return LiteRTRunner(path, threads)
