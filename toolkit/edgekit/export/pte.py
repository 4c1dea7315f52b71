"""ExecuTorch export (`.pte`): torch.export -> [PT2E INT8 with the XNNPACK quantizer] -> XNNPACK partitioner.

    to_edge_transform_and_lower(torch.export.export(m, (x,)), partitioner=[XnnpackPartitioner()]).to_executorch()

FP32 by default; INT8 when calibration inputs are given (static PT2E: `prepare_pt2e`, calibration, `convert_pt2e`,
with executorch's XNNPACKQuantizer, per-channel symmetric weights and affine activations unless another quantizer is
passed). The sidecar `<file>.pte.json` records what the partitioner did: which operators were delegated to XNNPACK
and which fell back to ExecuTorch's portable kernels, plus the program's operators in execution order (names,
layers, shapes), which the per-operator profile maps its XNNPACK events onto. With `probe_inputs` it also holds the
per-layer accuracy of the program in the ExecuTorch runtime (edgekit.export._pte_probe).

The `.pte` is portable across CPUs: XNNPACK picks its kernels (AVX-512, NEON, ...) when the program is loaded, so
the same file serves the host, a Raspberry Pi 4 and an Android phone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit import sidecars
from edgekit.errors import EdgekitError, first_line
from edgekit.export._pte_lower import lower, quiet
from edgekit.fileio import atomic_path, write_json

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.signature import Signature

RUNTIME = "executorch"
KEEPS_SIGNATURE = True  # export(..., signature=) keeps names and dynamic dims
SUFFIX = ".pte"
WANTS_INPUTS = True  # the export stage passes held-out inputs: the per-layer check runs on them
PROBE_INPUTS = 8
# The per-layer check taps every layer at full resolution: PP-OCRv4's detector at 1x3x736x992 (8.8 MB per input) took
# 6.5 GB for one input. Above this size per input the check is skipped and the sidecar says so.
PROBE_MAX_INPUT_MB = 2.0
# ExecuTorch plans memory for the largest input a program accepts: the dynamic dimensions' upper bounds are chosen so
# that input takes at most this much (export/_signature.py).
PLANNED_INPUT_MB = 32.0


def probe_skipped(example: Any) -> str | None:
    """Why the per-layer check is skipped for inputs like `example` (None: it runs)."""
    mb = np.asarray(example).nbytes / 2**20
    if mb <= PROBE_MAX_INPUT_MB:
        return None
    return (f"per-layer check skipped: one input is {mb:.1f} MB (above {PROBE_MAX_INPUT_MB:g} MB its every layer "
            "at full resolution would be held at once)")


def sidecar(path: str | Path) -> Path:
    """The JSON that describes a `.pte` artifact (edgekit.sidecars)."""
    return sidecars.pte(path)


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    return sidecars.read(sidecars.pte(path))


def default_quantizer(per_channel: bool = True) -> Any:
    """executorch's XNNPACKQuantizer: static INT8, symmetric weights (per channel), affine activations."""
    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))


def quantize(model: nn.Module, example: np.ndarray, calibration: np.ndarray, quantizer: Any = None) -> Any:
    """PT2E static INT8: the converted GraphModule (q/dq nodes around the quantised operators)."""
    import torch

    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = torch.as_tensor(np.ascontiguousarray(example, np.float32))
    batch = x.shape[0]
    calibration = np.asarray(calibration, np.float32)
    if len(calibration) < batch:
        raise EdgekitError(f"ExecuTorch INT8 export: {len(calibration)} calibration inputs, need at least {batch}")
    try:
        with quiet():
            m = torch.export.export(model.eval(), (x,)).module()
            m = prepare_pt2e(m, quantizer or default_quantizer())
            with torch.no_grad():
                for i in range(0, len(calibration) - len(calibration) % batch, batch):
                    m(torch.as_tensor(calibration[i:i + batch]))
            return convert_pt2e(m)
    except Exception as e:
        raise EdgekitError(f"PT2E quantisation (XNNPACK quantizer) failed: {first_line(e)}") from None


def export(model: nn.Module, example: np.ndarray, path: Path, calibration: np.ndarray | None = None,
           quantizer: Any = None, probe_inputs: np.ndarray | None = None, precision: str | None = None,
           signature: Signature | None = None) -> Path:
    """Writes `model` as an ExecuTorch program lowered to XNNPACK, and its sidecar.

    Args:
        model: the float torch model.
        example: one input batch (fixes the program's input shape).
        path: output `.pte`.
        calibration: inputs for INT8 calibration; None exports FP32.
        quantizer: a PT2E quantizer for INT8 (default: XNNPACKQuantizer, per-channel); needs `calibration`.
        probe_inputs: held-out inputs for the per-layer accuracy check (None: skipped).
        precision: label for the sidecar ("fp32", "int8", "mixed"; default from `calibration`).
        signature: the model's signature: its dynamic dimensions are exported with bounds (torch.export.Dim) where
            the model allows them, and the sidecar records the program's signature under the model's names.
    """
    import torch

    from edgekit.export import _signature as sig

    x = torch.as_tensor(np.ascontiguousarray(example, np.float32))
    source = model.eval() if calibration is None else quantize(model, example, calibration, quantizer)
    attempts = sig.bounded_attempts(signature, x, PLANNED_INPUT_MB) if calibration is None else None
    program, fallback = _export(source, x, attempts)
    sig.note_fallback(path, "torch.export", fallback)
    program_signature = _program_signature(program, signature, sig)
    skip = probe_skipped(x)
    probe = probe_inputs is not None and len(probe_inputs) > 0 and skip is None
    pristine = copy.deepcopy(program) if probe else None  # lowering rewrites the program in place
    buffer, info = lower(program)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
    del buffer, program  # the probe below lowers its own copy: these weights need not stay
    meta = {"format": "pte", "precision": precision or ("fp32" if calibration is None else "int8"),
            "input_shape": list(x.shape), "executorch_version": _version(), "backend": "XnnpackBackend",
            "quantizer": None if calibration is None else type(quantizer or default_quantizer()).__name__,
            **info, **({"signature": program_signature.as_dict()} if program_signature else {}),
            **({"layers_skipped": skip} if skip and probe_inputs is not None else {})}
    write_json(sidecar(path), meta)  # before the probe: the runtime reads the program's signature from it
    if probe:
        from edgekit.export._pte_probe import layer_accuracy

        meta["layers"] = layer_accuracy(pristine, model, x, np.asarray(probe_inputs, np.float32), Path(path))
        write_json(sidecar(path), meta)
    return Path(path)


def check_layers(model: nn.Module, example: np.ndarray, artifact: Path, probe_inputs: np.ndarray,
                 calibration: np.ndarray | None = None, quantizer: Any = None) -> dict[str, Any]:
    """Per-layer accuracy of an existing `.pte` made from `model` (and, for INT8, the same calibration and quantizer):
    the program is rebuilt as a debug build and the result goes into the artifact's sidecar.

    The debug build's output is compared with the artifact's own (`probe_vs_artifact_max_abs`), so a rebuild that
    differed from the file would show.
    """
    import torch

    from edgekit.export._pte_probe import layer_accuracy

    meta = read_sidecar(artifact) or {}
    if skip := probe_skipped(example):
        meta["layers_skipped"] = skip
        write_json(sidecar(artifact), meta)
        return {}
    x = torch.as_tensor(np.ascontiguousarray(example, np.float32))
    source = model.eval() if calibration is None else quantize(model, example, calibration, quantizer)
    layers = layer_accuracy(_export(source, x)[0], model, x, np.asarray(probe_inputs, np.float32), Path(artifact))
    meta["layers"] = layers
    write_json(sidecar(artifact), meta)
    return layers


def _export(module: Any, x: Any, attempts: list[tuple[Any, Any]] | None = None) -> tuple[Any, Exception | None]:
    """(torch.export of the module: with dynamic dimensions where `attempts` ((example, {axis: Dim}), ...) allow
    them, else static; why the first dynamic attempt failed, when it did)."""
    import torch

    first = None
    try:
        with quiet(), torch.no_grad():
            for example, dyn in (attempts or [])[:-1]:
                try:
                    return torch.export.export(module, (example,), dynamic_shapes=(dyn,)), None
                except Exception as e:  # noqa: BLE001 - the next attempt, at last the static program
                    first = first or e
            return torch.export.export(module, (x,)), first
    except Exception as e:
        raise EdgekitError(f"ExecuTorch export failed (torch.export): {first_line(e)}") from None


def _program_signature(program: Any, signature: Signature | None, sig: Any) -> Signature | None:
    """The exported program's inputs and outputs (a symbolic size is a dynamic dimension), under the model's names."""
    from edgekit.signature import Signature, TensorSpec

    def dims(val: Any) -> tuple[int | str, ...]:
        return tuple(int(d) if isinstance(d, int) or str(d).isdigit() else "" for d in getattr(val, "shape", ()))

    nodes = list(program.graph.nodes)
    user = set(program.graph_signature.user_inputs)
    ins = [n for n in nodes if n.op == "placeholder" and n.name in user]
    out_node = next(n for n in reversed(nodes) if n.op == "output")
    outs = [a for a in out_node.args[0]] if isinstance(out_node.args[0], (tuple, list)) else [out_node.args[0]]
    names = signature if sig.names_fit(signature, len(outs)) else None
    return Signature(
        tuple(TensorSpec(names.input_names[i] if names else n.name, "float32", dims(n.meta.get("val")))
              for i, n in enumerate(ins)),
        tuple(TensorSpec(names.output_names[i] if names else f"output_{i}", "float32",
                         dims(getattr(o, "meta", {}).get("val"))) for i, o in enumerate(outs)),
        "executorch program")


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")


def artifact_meta(path: Path) -> dict[str, Any]:
    """The artifact record's `executorch` field (the export stage adds it to report.json)."""
    from edgekit.export._pte_report import artifact_meta as meta

    return meta(path)


def report_section(path: Path) -> tuple[str, str]:
    """(title, markdown) for report.md: delegation and per-layer accuracy."""
    from edgekit.export._pte_report import report_section as section

    return section(path)
