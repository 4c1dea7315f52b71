"""Per-layer accuracy of an ExecuTorch program in the ExecuTorch runtime, against the float torch model.

A debug build of the same program exposes the input of every Conv / Linear layer as an extra program output
(executorch.devtools.intermediate_output_tap: the tapped values leave the XNNPACK delegate as outputs, so XNNPACK
computes them as it does in the real program). In an INT8 program the tap sits on the quantize node that feeds the
layer, so the value is exactly the INT8 tensor the layer reads; it is dequantised with that node's scale and zero
point. The float torch model gives the same tensors through forward pre-hooks on the layers.

Each layer gets the SQNR of its input (dB, higher is better) and the SQNR after it (the next layer's input, or the
model output for the last one); `drop_db` between the two is the error the layer (and the operators up to the next
layer) added. The debug build's final output is compared with the real artifact's to show it computes the same thing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import sidecars

LAYER_OPS = {"aten.conv1d.default", "aten.conv2d.default", "aten.convolution.default", "aten.linear.default"}
GROWS_DB = 3.0  # a layer "grows the error" when the SQNR drops by at least this much across it ...
NOISY_DB = 60.0  # ... to below this level (float programs sit near 100+ dB: their drops are rounding noise)


def tap_points(program: Any) -> list[dict[str, Any]]:
    """The tensor read by each layer, in execution order: [{"layer", "node" (tap source or None), "scale", "zp"}]."""
    from edgekit.export._pte_lower import _op_name

    points = []
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function" or _op_name(node.target) not in LAYER_OPS:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        layer = list(stack.values())[-1][0] if stack else node.name
        src, scale, zp = node.args[0], None, None
        if "dequantize_per_tensor" in _op_name(getattr(src, "target", "")):
            q = src.args[0]
            ok = "quantize_per_tensor" in _op_name(getattr(q, "target", "")) and all(
                isinstance(v, (int, float)) for v in q.args[1:3])
            src, scale, zp = (q, float(q.args[1]), int(q.args[2])) if ok else (None, None, None)
        points.append({"layer": layer, "node": src.name if getattr(src, "op", "") == "call_function" else None,
                       "scale": scale, "zp": zp})
    return points


def _reference(model: Any, layers: list[str], x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The float model's inputs of `layers` and its output for one batch."""
    import torch

    modules = dict(model.named_modules())
    seen: dict[str, np.ndarray] = {}
    hooks = [modules[name].register_forward_pre_hook(
        lambda _m, inp, name=name: seen.__setitem__(name, inp[0].detach().numpy().copy()))
        for name in set(layers) if name in modules]
    try:
        with torch.no_grad():
            from edgekit.train import flat_outputs

            out = flat_outputs(model(torch.as_tensor(x)))[0].numpy()  # the first output: the probe compares it
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def _powers(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(signal, noise) sums of squares: added up batch by batch, so no layer's tensors are held for all inputs."""
    r = ref.astype(np.float64)
    return float(np.sum(r ** 2)), float(np.sum((r - np.asarray(got, np.float64)) ** 2))


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return 200.0
    return round(10 * np.log10(max(signal, 1e-30) / noise), 2)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return _db(*_powers(ref, got))


def layer_accuracy(program: Any, model: Any, example: Any, inputs: np.ndarray, artifact: Path) -> dict[str, Any]:
    """Runs the debug build on `inputs` in the ExecuTorch runtime and compares each layer's input with torch.

    Args:
        program: the ExportedProgram the artifact was lowered from (float, or PT2E-converted INT8); it is tapped
            in place, so pass a copy.
        model: the float torch model (the reference).
        example: the program's example input (its batch size fixes how inputs are fed).
        inputs: held-out inputs (N, ...).
        artifact: the real `.pte` (its output is compared with the debug build's).
    """
    from executorch.devtools.intermediate_output_tap import FULL_TENSOR, tap_intermediate_outputs_

    from edgekit.export._pte_lower import lower, quiet
    from edgekit.runtimes.executorch import ExecuTorchRunner

    points = tap_points(program)
    names = {p["node"] for p in points if p["node"]}
    with quiet():
        tapped, specs = tap_intermediate_outputs_(program, rules=[(lambda n: n.name in names,
                                                                                   FULL_TENSOR)])
    index = {s.node_name: s.output_index for s in specs}
    buffer, _ = lower(tapped, taps=True)
    batch = int(example.shape[0])
    n = len(inputs) - len(inputs) % batch
    # per layer: [signal, noise] summed over the batches (a big model's taps at full resolution for all inputs at
    # once held gigabytes: PP-OCRv4's detector at 736x992)
    powers: dict[str, list[float]] = {}
    outs: dict[str, list[np.ndarray]] = {"torch": [], "probe": [], "artifact": []}
    with tempfile.TemporaryDirectory(prefix="edgekit-probe-") as d:
        probe_path = Path(d) / "probe.pte"
        probe_path.write_bytes(buffer)
        del buffer  # each copy of the weights counts: vgg19's are 0.55 GB
        side = sidecars.read(sidecars.pte(artifact)) or {}
        if side.get("signature"):  # the debug build takes the shapes the artifact takes
            sidecars.pte(probe_path).write_text(json.dumps({"signature": side["signature"]}))
        # the artifact first and on its own: a runtime holds the weights (and XNNPACK its packed copy), so the two
        # programs are never loaded at once
        real = ExecuTorchRunner(artifact, 1)
        outs["artifact"] = [real(inputs[i:i + batch]) for i in range(0, n, batch)]
        del real
        probe = ExecuTorchRunner(probe_path, 1)
        for i in range(0, n, batch):
            xb = inputs[i:i + batch]
            seen, out = _reference(model, [p["layer"] for p in points], xb)
            values = probe.outputs(xb)
            outs["torch"].append(out)
            outs["probe"].append(values[0])
            for p in points:
                if p["node"] in index and p["layer"] in seen:
                    v = values[index[p["node"]]].astype(np.float32)
                    if p["scale"] is not None:
                        v = (v - p["zp"]) * p["scale"]
                    signal, noise = _powers(seen[p["layer"]], v)
                    acc = powers.setdefault(p["layer"], [0.0, 0.0])
                    acc[0], acc[1] = acc[0] + signal, acc[1] + noise
            del values, seen
    return _summary(points, powers, {k: np.concatenate(v) for k, v in outs.items()}, n)


def _summary(points: list[dict[str, Any]], powers: dict[str, list[float]], outs: dict[str, np.ndarray],
             n: int) -> dict[str, Any]:
    rows = []
    for p in points:
        sq = _db(*powers[p["layer"]]) if p["layer"] in powers else None
        rows.append({"layer": p["layer"], "sqnr_in_db": sq, "int8_input": p["scale"] is not None})
    final = sqnr_db(outs["torch"], outs["artifact"])
    for i, row in enumerate(rows):
        after = next((r["sqnr_in_db"] for r in rows[i + 1:] if r["sqnr_in_db"] is not None), final)
        row["sqnr_out_db"] = after
        row["drop_db"] = None if row["sqnr_in_db"] is None else round(row["sqnr_in_db"] - after, 2)
        row["grows"] = bool(row["drop_db"] is not None and row["drop_db"] >= GROWS_DB and after < NOISY_DB)
    ref_scale = float(np.abs(outs["torch"]).max()) or 1.0
    return {"method": "debug build: layer inputs tapped as program outputs (executorch intermediate_output_tap), "
                      "run in the ExecuTorch runtime on this machine; reference: the float torch model",
            "inputs": n, "output_sqnr_db": final,
            "output_max_abs_err": round(float(np.abs(outs["torch"] - outs["artifact"]).max()), 6),
            "output_max_abs_ref": round(ref_scale, 6),
            "probe_vs_artifact_max_abs": round(float(np.abs(outs["probe"] - outs["artifact"]).max()), 6),
            "rows": rows, "grows": [r["layer"] for r in rows if r["grows"]]}
