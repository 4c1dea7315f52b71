"""Adapter-only files: the adapter tensors (and any fully trained module, e.g. a new head) in one small safetensors
file, so a device that holds the base weights can swap tasks by loading a different adapter and merging.

safetensors holds tensors and string metadata only (no pickle), so loading an untrusted adapter file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgekit.adapters.inject import ADAPTER_TAG, add_adapters
from edgekit.errors import InputError
from edgekit.fileio import atomic_path

FORMAT = "edgekit-adapter/1"


def adapter_state(model: nn.Module, train_modules: list[str] | tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: every adapter tensor plus the state of fully trained modules."""
    out = {}
    for k, v in model.state_dict().items():
        if ADAPTER_TAG in k or any(k.startswith(t + ".") for t in train_modules):
            out[k] = v.detach().cpu().contiguous()
    return out


def save_adapter(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """Writes the adapter of an adapted (not yet merged) model.

    Args:
        model: the model with adapters in place.
        path: the .safetensors file to write (atomically).
        meta: method, rank, alpha, layers (the adapted layer names) and train_modules, as `load_adapter` needs them.
    """
    from safetensors.torch import save_file

    tensors = adapter_state(model, meta.get("train_modules", ()))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "edgekit": json.dumps(meta)})
    return Path(path)


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"{path} is not a readable safetensors adapter file ({e})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} is not an edgekit adapter file (format {meta.get('format')!r})")
    return tensors, _check_meta(meta.get("edgekit"), path)


def _check_meta(raw: str | None, path: Path) -> dict[str, Any]:
    """The adapter's description from the file's metadata, checked before anything is built from it."""
    from edgekit.adapters.inject import METHODS

    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: the adapter metadata ('edgekit') is missing or not a JSON object")
    problems = []
    if meta.get("method") not in METHODS:
        problems.append(f"method {meta.get('method')!r} (expected one of {', '.join(METHODS)})")
    if not isinstance(meta.get("rank"), int) or isinstance(meta.get("rank"), bool) or meta["rank"] < 1:
        problems.append(f"rank {meta.get('rank')!r}")
    if not isinstance(meta.get("alpha"), (int, float)) or isinstance(meta.get("alpha"), bool):
        problems.append(f"alpha {meta.get('alpha')!r}")
    for key in ("layers", "train_modules"):
        value = meta.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{key} {value!r} (expected a list of names)")
    if problems:
        raise InputError(f"{path}: malformed adapter metadata: {'; '.join(problems)[:300]}")
    return meta


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Adds the file's adapters to a base model and loads their values (unmerged; call merge_adapters next).

    A fully trained Linear module whose shape differs from the base (a new head) is rebuilt at the file's shape.
    """
    tensors, meta = read_adapter(path)
    modules = dict(model.named_modules())
    for t in meta.get("train_modules", []):
        w = tensors.get(f"{t}.weight")
        mod = modules.get(t)
        if isinstance(mod, nn.Linear) and w is not None and tuple(w.shape) != tuple(mod.weight.shape):
            new = nn.Linear(w.shape[1], w.shape[0], bias=f"{t}.bias" in tensors)
            parent, _, attr = t.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
    add_adapters(model, meta["method"], meta["rank"], meta["alpha"], meta["layers"],
                 train_modules=meta.get("train_modules", ()))
    expected = adapter_state(model, meta.get("train_modules", ()))
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise InputError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(tensors[k].shape)]
    if bad:
        raise InputError(f"{path} does not fit this model: shape of {bad[0]} is {list(tensors[bad[0]].shape)}, "
                         f"the model needs {list(expected[bad[0]].shape)}")
    model.load_state_dict(tensors, strict=False)
    return model
