"""Model sources that can run code, and the checks that keep them from doing so unless the user opts in.

A torch.export `.pt2` file is a zip archive. Its graph (models/*.json) and its raw tensors are data, but torch's
loader also unpickles, with `weights_only=False`, every weight or constant whose payload config says `use_pickle`,
opaque and torchbind constants, archives in the legacy layout, and sample inputs that `weights_only=True` refuses
(torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py); AOTInductor entries are shared libraries.
`check_pt2` reads the archive with zipfile and json only and refuses all of those, so that `torch.export.load` of
the same bytes afterwards unpickles nothing. `module:factory` imports a module, which runs its code by definition.
Both need `--trust-model-code` (api: `trust_code=True`).
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path

from edgekit.errors import InputError

TRUST_FLAG = "--trust-model-code"


def refuse(path: str | Path, what: str) -> InputError:
    return InputError(f"{path} {what}, which runs code when loaded; pass {TRUST_FLAG} only if you trust where the "
                      f"file came from")


def check_factory(spec: str, trust_code: bool, what: str = "") -> None:
    """A `package.module:factory` model (or a --metric function) imports and runs Python code: only with the opt-in
    flag."""
    if not trust_code:
        kind = f"{what} '{spec}' is a Python function" if what else f"'{spec}' is a Python factory"
        raise InputError(f"{kind}: loading it imports {spec.partition(':')[0]} and runs its code; pass {TRUST_FLAG} "
                         f"to allow that")


def check_pt2(data: bytes, path: str | Path) -> None:
    """Refuses a .pt2 archive (its bytes) whose loading would unpickle anything or load compiled code.

    Raises:
        InputError: one line naming what the archive holds.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        _check_archive(zf, path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise InputError(f"{path} is not a readable torch.export archive ({e}); is the file complete?") from None


def _check_archive(zf: zipfile.ZipFile, path: str | Path) -> None:
    from torch.export.pt2_archive import constants as c

    names = zf.namelist()
    # Everything lives under one root folder. Top-level entries are what torch's fallback reader for the pre-2.8
    # layout looks for (`version`, serialized_*), and that reader unpickles: refuse them outright.
    roots = {n.split("/", 1)[0] if "/" in n else "" for n in names}
    if len(roots) != 1 or "" in roots:
        raise refuse(path, "is not laid out as one torch.export archive (top-level entries or several roots)")
    root = roots.pop() + "/"
    rel = {n[len(root):]: n for n in names}
    models = [r for r in rel if r.startswith(c.MODELS_DIR) and r.endswith(".json")]
    if not models:
        raise refuse(path, "is in the legacy torch.export layout (pickled program and weights)")
    for r in rel:
        if r.startswith((c.AOTINDUCTOR_DIR, c.EXECUTORCH_DIR, c.MTIA_DIR, c.XL_MODEL_WEIGHTS_DIR)):
            raise refuse(path, f"holds compiled code or external weights ({r})")
    for model_file in models:
        name = model_file[len(c.MODELS_DIR):-len(".json")]
        for legacy in (f"{c.WEIGHTS_DIR}{name}.pt", f"{c.CONSTANTS_DIR}{name}.pt"):
            if legacy in rel:
                raise refuse(path, f"holds pickled tensors in the legacy layout ({legacy})")
        for fmt, kind in ((c.WEIGHTS_CONFIG_FILENAME_FORMAT, "weight"), (c.CONSTANTS_CONFIG_FILENAME_FORMAT,
                                                                           "constant")):
            config_name = fmt.format(name)
            if config_name in rel:
                _check_payload_config(zf.read(rel[config_name]), kind, path)
        sample = c.SAMPLE_INPUTS_FILENAME_FORMAT.format(name)
        if sample in rel:
            _check_tensor_pickle(zf.read(rel[sample]), path, "sample inputs")


def _check_payload_config(raw: bytes, kind: str, path: str | Path) -> None:
    from torch.export.pt2_archive import constants as c

    try:
        config = json.loads(raw)["config"]
        entries = [(str(k), bool(v.get("use_pickle")), str(v.get("path_name", ""))) for k, v in config.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: the {kind} table of the archive is not readable; is the file complete?") from None
    for fqn, pickled, file_name in entries:
        if pickled:
            raise refuse(path, f"holds a pickled {kind} ('{fqn}')")
        if kind == "constant" and not file_name.startswith(c.TENSOR_CONSTANT_FILENAME_PREFIX):
            raise refuse(path, f"holds a Python object as constant '{fqn}'")


def _check_tensor_pickle(raw: bytes, path: str | Path, what: str) -> None:
    """torch retries with weights_only=False when weights_only=True fails; this file must pass the safe load."""
    import torch

    try:
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:
        raise refuse(path, f"holds {what} that are not plain tensors") from None
