"""Files that travel beside an artifact and say what it is: defined once, below the exporters that write them and
the runtimes that read them.

    model.pte        model.pte.json       delegation, operators in execution order, per-layer accuracy
    model.tvm.so     model.tvm.json       input shape, target, kernels
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TVM_SUFFIX = ".tvm.so"


def pte(path: str | Path) -> Path:
    """The JSON that describes a `.pte` artifact (delegation, operators, per-layer accuracy)."""
    return Path(str(path) + ".json")


def tvm(path: str | Path) -> Path:
    """The JSON that describes a TVM artifact (input shape, target, kernels)."""
    return Path(str(path).removesuffix(TVM_SUFFIX) + ".tvm.json")


def read(side: Path) -> dict[str, Any] | None:
    """A sidecar's content, or None when it is missing or unreadable."""
    try:
        return json.loads(side.read_text()) if side.is_file() else None
    except (OSError, ValueError):
        return None
