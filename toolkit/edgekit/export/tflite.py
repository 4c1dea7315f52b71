"""TFLite export through litert-torch (torch.export -> StableHLO -> TFLite flatbuffer).

Given the model's signature (edgekit.signature), the file's signature def ("serving_default") takes its input and
output names and its dynamic dimensions (-1 in the shape signature; a client resizes them with
`resize_tensor_input`); a dimension the model's code fixes stays static, and the artifact record says so.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError, first_line
from edgekit.fileio import atomic_path

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.signature import Signature

RUNTIME = "litert"
KEEPS_SIGNATURE = True  # export(..., signature=) keeps names and dynamic dims
SUFFIX = ".tflite"
FROM_FILE = ("tflite",)  # model-file formats this format is made from without torch (importers.native)


def export(model: nn.Module, example: np.ndarray, path: Path, signature: Signature | None = None,
           **convert_kwargs: Any) -> Path:
    """Converts `model` at the example's shape (with `signature`: under its names, with its dynamic dimensions where
    the model allows them); extra keyword arguments go to litert_torch.convert."""
    import torch

    from edgekit.export import _signature as sig

    with _quiet_native():
        import litert_torch

        model = model.eval()
        x = torch.as_tensor(example)
        attempts = [((model, (x,)), {})]
        if sig.names_fit(signature, sig.output_count(model, x)):
            name = signature.input_names[0]
            named = _Named(model, name, signature.output_names)
            attempts = [((named, None), {"sample_kwargs": {name: example},
                                         **({"dynamic_shapes": {name: dyn}} if dyn else {})})
                        for example, dyn in sig.bounded_attempts(signature, x)] + attempts
        with atomic_path(path) as tmp:
            error = None
            for (module, args), kw in attempts:  # names and dynamic dims first, then what the model allows
                try:
                    edge = litert_torch.convert(module, args, **kw, **convert_kwargs)
                    edge.export(str(tmp))
                    break
                except Exception as e:
                    error = error or e
            else:
                raise EdgekitError(f"TFLite export failed: {first_line(error)}")
        if "dynamic_shapes" not in kw:
            sig.note_fallback(path, "litert-torch", error)
    return path


@functools.cache
def _named_class() -> type:
    import torch

    class Named(torch.nn.Module):
        """The model with keyword input and dict outputs: litert-torch names the signature def after them."""

        def __init__(self, model: Any, input_name: str, output_names: list[str]) -> None:
            super().__init__()
            self.model, self.input_name, self.output_names = model, input_name, list(output_names)

        def forward(self, **inputs: Any) -> dict[str, Any]:
            out = self.model(inputs[self.input_name])
            out = tuple(out.values()) if isinstance(out, dict) else out
            out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            return dict(zip(self.output_names, out, strict=True))

    return Named


def _Named(model: Any, input_name: str, output_names: list[str]) -> Any:  # noqa: N802 - builds a torch module
    return _named_class()(model, input_name, output_names).eval()


def from_file(src: Path, path: Path) -> Path:
    """The artifact of a model that is a .tflite file already (the TFLite-native route): the file itself."""
    from edgekit.fileio import copy_atomic

    return copy_atomic(Path(src), Path(path))


@contextlib.contextmanager
def _quiet_native():
    """litert-torch and the MLIR converter print progress from C++ to fd 1/2; keep the CLI's screen clean."""
    if os.environ.get("EDGEKIT_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
