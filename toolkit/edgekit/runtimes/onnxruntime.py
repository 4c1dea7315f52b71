"""ONNX Runtime (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import InputError, first_line


class OrtRunner:
    def __init__(self, path: Path, threads: int, profile_prefix: str | None = None, input_name: str | None = None
                 ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spinning threads would steal the core of whatever runs next (another runtime timed side by side).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise InputError(f"ONNX Runtime cannot load {path}: {first_line(e, 200)}") from None
        # IR-3 files list their initializers among the inputs too: a caller that knows the real input names it.
        inp = next((i for i in self.session.get_inputs() if i.name == input_name), self.session.get_inputs()[0])
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        self.runtime = f"onnxruntime {ort.__version__}"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]


def load(path: Path, threads: int) -> OrtRunner:
    return OrtRunner(path, threads)
