"""TVM runtime: a `*.tvm.so` from the tvm export, run by relax.VirtualMachine on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgekit.errors import InputError, RuntimeUnavailable


class TvmRunner:
    def __init__(self, path: Path, threads: int) -> None:
        # TVM's thread pool reads this when it starts; the kernels themselves are single-threaded.
        os.environ.setdefault("TVM_NUM_THREADS", str(max(1, threads)))
        try:
            import tvm
            from tvm import relax
        except ImportError as e:
            raise RuntimeUnavailable(f"runtime tvm needs apache-tvm (make install): {e}") from None
        from edgekit.export.tvm import sidecar

        meta_path = sidecar(path)
        if not Path(path).is_file() or not meta_path.is_file():
            raise InputError(f"{path} is not a TVM artifact of edgekit (needs {meta_path.name} beside it)")
        self.meta = json.loads(meta_path.read_text())
        try:
            self.lib = tvm.runtime.load_module(str(path))
            self.vm = relax.VirtualMachine(self.lib, tvm.cpu())
        except Exception as e:
            raise InputError(f"TVM cannot load {path}: {str(e).strip().splitlines()[-1][:200]}") from None
        self._tvm = tvm
        self._main = self.vm["main"]
        self.input_shape = tuple(self.meta["input_shape"])
        self.runtime = f"tvm {tvm.__version__} (relax vm + edgekit kernels)"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != self.input_shape:
            raise InputError(f"TVM artifact expects input {self.input_shape}, got {x.shape}")
        out = self._main(self._tvm.runtime.tensor(x))
        while not hasattr(out, "numpy"):  # the frontend returns a tuple of outputs
            out = out[0]
        return out.numpy()


def load(path: Path, threads: int) -> TvmRunner:
    return TvmRunner(path, threads)
