"""ONNX export through torch.onnx (dynamo exporter), one self-contained file."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import EdgekitError, first_line
from edgekit.fileio import atomic_path

if TYPE_CHECKING:
    import torch.nn as nn

RUNTIME = "onnxruntime"
SUFFIX = ".onnx"
OPSET = 18
FROM_FILE = ("onnx",)  # model-file formats this format is made from without torch (importers.native)


def export(model: nn.Module, example: np.ndarray, path: Path, opset: int = OPSET) -> Path:
    import torch

    model = model.eval()
    x = torch.as_tensor(example)
    with atomic_path(path) as tmp, _quiet():
        tmp_onnx = tmp.with_suffix(".onnx")
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, external_data=False,
                                        optimize=True, verbose=False)
            program.save(str(tmp_onnx), external_data=False)
        except Exception as e:
            raise EdgekitError(f"ONNX export failed: {first_line(e)}") from None
        tmp_onnx.replace(tmp)
    return path


def from_file(src: Path, path: Path) -> Path:
    """The artifact of a model that is an ONNX file already (the ONNX-native route): the file itself."""
    from edgekit.fileio import copy_atomic

    return copy_atomic(Path(src), Path(path))


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress lines; the CLI shows its own progress."""
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger("torch.onnx").setLevel(level)
