"""Importing ExecuTorch and torchao quietly (shared by the runtime, its ETDump reader and the exporters)."""

from __future__ import annotations

import functools


@functools.cache
def quiet_imports() -> None:
    """Imports torchao and executorch.exir once with torch's logger muted: importing torchao logs a torch pytree
    deprecation warning on stderr, which would break the CLI's one-line errors."""
    import logging

    # torch's logging setup may give the pytree logger its own level: mute it by name, not only through "torch".
    logs = [logging.getLogger(n) for n in ("torch", "torch.utils._pytree")]
    levels = [lg.level for lg in logs]
    for lg in logs:
        lg.setLevel(logging.ERROR)
    try:
        import executorch.exir  # noqa: F401
        import torchao  # noqa: F401
    except ImportError:
        pass  # reported by the caller's own import, with its context
    finally:
        for lg, level in zip(logs, levels, strict=True):
            lg.setLevel(level)
