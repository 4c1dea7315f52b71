"""Rule set for runtimes without sparse kernels (`sparse_rules = "none"`): zeros are stored and multiplied densely."""

from __future__ import annotations

# Why a runtime named in a target runs pruned weights densely; the generic text covers the others.
NO_SPARSE_KERNELS = {
    "onnxruntime": "ONNX Runtime has no sparse convolution kernels: pruned zeros are stored and multiplied like any "
                   "weight (the file only gets smaller when compressed)",
}


def reason(runtime_name: str) -> str:
    return NO_SPARSE_KERNELS.get(runtime_name, f"{runtime_name} has no sparse kernels: zeros run densely")
