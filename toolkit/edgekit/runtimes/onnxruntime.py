"""ONNX Runtime (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import InputError, first_line

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
           "tensor(bool)": np.bool_}


class OrtRunner:
    """An ONNX file in ONNX Runtime: every input by name (one array: the first input), every output."""

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
        inputs = self.session.get_inputs()
        first = next((i for i in inputs if i.name == input_name), inputs[0])
        self.inputs = [first, *(i for i in inputs if i is not first and input_name is None)]
        self.input_name = first.name
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in first.shape)
        self.batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) and first.shape[0] > 0 else None
        self.dynamic = any(not (isinstance(d, int) and d > 0) for d in first.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.dtypes = {i.name: _DTYPES.get(i.type, np.float32) for i in self.inputs}
        self.runtime = f"onnxruntime {ort.__version__}"

    def feed(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(x, dict):
            missing = [i.name for i in self.inputs if i.name not in x]
            if missing:
                raise InputError(f"ONNX Runtime: no data for inputs {missing}")
            return {i.name: np.ascontiguousarray(x[i.name], self.dtypes[i.name]) for i in self.inputs}
        return {self.input_name: np.ascontiguousarray(x, self.dtypes[self.input_name])}

    def outputs(self, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, self.feed(x))

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        return self.outputs(x)[0]


def load(path: Path, threads: int) -> OrtRunner:
    return OrtRunner(path, threads)
