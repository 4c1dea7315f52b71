"""TFLite export through litert-torch (torch.export -> StableHLO -> TFLite flatbuffer)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError, first_line
from edgekit.fileio import atomic_path

if TYPE_CHECKING:
    import torch.nn as nn

RUNTIME = "litert"
SUFFIX = ".tflite"
FROM_FILE = ("tflite",)  # model-file formats this format is made from without torch (importers.native)


def export(model: nn.Module, example: np.ndarray, path: Path, **convert_kwargs: Any) -> Path:
    """Converts `model` at the example's shape; extra keyword arguments go to litert_torch.convert."""
    import torch

    with _quiet_native():
        import litert_torch

        model = model.eval()
        x = torch.as_tensor(example)
        with atomic_path(path) as tmp:
            try:
                edge = litert_torch.convert(model, (x,), **convert_kwargs)
                edge.export(str(tmp))
            except Exception as e:
                raise EdgekitError(f"TFLite export failed: {first_line(e)}") from None
    return path


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
