"""edgekit: compress neural networks for edge devices and report measured gains.

    import edgekit
    result = edgekit.compress(model, target="rpi4", data=(x, y), example_input=x[:1])
    result.model, result.artifacts, result.best, result.summary

Importing this package is cheap: heavy dependencies (torch, onnxruntime, litert) are imported inside the
functions that need them.
"""

from __future__ import annotations

from typing import Any

from edgekit.version import __version__

__all__ = ["__version__", "compress"]


def compress(model: Any = None, target: str = "host", **kwargs: Any) -> Any:
    """Compresses `model` for `target` and writes a run folder; returns an edgekit.api.CompressResult.

    See edgekit.api.compress for every argument (data, recipe="auto", example_input, max_quality_drop, out, ...).
    """
    from edgekit.api import compress as _compress

    return _compress(model, target, **kwargs)
