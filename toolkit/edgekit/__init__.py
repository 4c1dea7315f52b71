"""edgekit: compress neural networks for edge devices and report measured gains.

Importing this package is cheap: heavy dependencies (torch, onnxruntime, litert) are imported inside the
functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
