"""ONNX export through torch.onnx (dynamo exporter), one self-contained file.

Given the model's signature (edgekit.signature), the file keeps it: the input and output names, the dynamic
dimensions (exported dynamic, named as the original names them) and the original file's metadata (e.g. a text
recogniser's alphabet). A dimension the model's code fixes stays static, and the artifact record says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError, first_line
from edgekit.fileio import atomic_path

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.signature import Signature

RUNTIME = "onnxruntime"
KEEPS_SIGNATURE = True  # export(..., signature=) keeps names and dynamic dims
SUFFIX = ".onnx"
OPSET = 18
FROM_FILE = ("onnx",)  # model-file formats this format is made from without torch (importers.native)


def export(model: nn.Module, example: np.ndarray, path: Path, opset: int = OPSET,
           signature: Signature | None = None) -> Path:
    """Exports `model` at the example's shape; with `signature`, under its names and with its dynamic dimensions
    (falling back to static ones when torch.export cannot keep them)."""
    import torch

    from edgekit.export import _signature as sig

    model = model.eval()
    x = torch.as_tensor(example)
    kw: dict = {}
    if sig.names_fit(signature, sig.output_count(model, x)):
        kw = {"input_names": signature.input_names, "output_names": signature.output_names}
    with atomic_path(path) as tmp, _quiet():
        tmp_onnx = tmp.with_suffix(".onnx")
        try:
            program, fallback = _export(model, x, opset, kw, sig.bounded_attempts(signature, x))
            program.save(str(tmp_onnx), external_data=False)
            sig.note_fallback(path, "torch.onnx", fallback)
        except Exception as e:
            raise EdgekitError(f"ONNX export failed: {first_line(e)}") from None
        if signature is not None:
            _like_the_original(tmp_onnx, signature)
        tmp_onnx.replace(tmp)
    return path


def _export(model: nn.Module, x: Any, opset: int, names: dict, attempts: list[tuple[Any, Any]]
            ) -> tuple[Any, Exception | None]:
    """(the ONNX program, why the first dynamic attempt failed when it fell back): dynamic dimensions with bounds
    (torch.export refuses a dimension the model's code fixes, and the next attempt drops it), then static."""
    import torch

    def run(example: Any, dyn: Any = None) -> Any:
        return torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, external_data=False,
                                 optimize=True, verbose=False, **names,
                                 **({"dynamic_shapes": (dyn,)} if dyn is not None else {}))

    first = None
    for example, dyn in attempts[:-1]:
        try:
            return run(example, dyn), None
        except Exception as e:  # noqa: BLE001 - the next attempt, at last the static program
            first = first or e
    return run(x), first


def _like_the_original(path: Path, signature: Signature) -> None:
    """The original's dimension symbols and metadata (what its clients read) on the exported file."""
    import onnx

    from edgekit.signature import onnx_dims_like

    proto = onnx.load(str(path))
    onnx_dims_like(proto, signature)
    have = {p.key for p in proto.metadata_props}
    for key, value in signature.metadata:
        if key not in have:
            proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


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
