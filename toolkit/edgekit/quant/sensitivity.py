"""Per-layer sensitivity: the quality drop and SQNR when only that layer is quantised; and each layer's latency share.

The ranking (most sensitive first) seeds the search: policies that keep the top-k layers float are tried first.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.quant.evaluate import Scorer
from edgekit.quant.policy import INT8_CHANNEL, Layer, Policy

# Inputs per layer of the sensitivity pass, in MB: a layer's SQNR on a few big inputs ranks it as well as on many.
PROXY_MB = 64


@dataclass
class LayerSensitivity:
    layer: Layer
    drop: float  # points, only this layer INT8
    sqnr_db: float  # of the model's output, only this layer INT8
    latency_share: float | None = None  # fraction of the float model's time spent in this layer

    def score(self) -> float:
        """Higher = more sensitive. Drop first; SQNR breaks ties (drop is coarse on small eval sets)."""
        sq = self.sqnr_db if math.isfinite(self.sqnr_db) else 200.0
        return self.drop - sq / 1000.0

    def as_dict(self) -> dict[str, object]:
        return {"layer": self.layer.name, "op": self.layer.op_type, "params": self.layer.params,
                "drop": round(self.drop, 3), "sqnr_db": round(self.sqnr_db, 2) if math.isfinite(self.sqnr_db) else None,
                "latency_share": None if self.latency_share is None else round(self.latency_share, 4)}


def layer_sensitivity(scorer: Scorer, calibration: str = "minmax", mode: str = INT8_CHANNEL,
                      progress: object = None, deadline: float | None = None) -> list[LayerSensitivity]:
    """Quantises one layer at a time (all others float) and scores the model; no timing.

    With a `deadline` (time.perf_counter() value) the pass stops there: a backend whose candidates are whole exports
    (PT2E: ~10 s each) would otherwise spend the search's time on a deep model's layers alone. The layers measured
    come first, in model order; the caller sees how many by the list's length.
    """
    layers = scorer.backend.layers
    out = []
    # Big inputs: each layer is looked at on a few of them (its SQNR ranks it), not scored on all.
    per_input = scorer.x[:1].nbytes
    n = min(len(scorer.x), max(8, int(PROXY_MB * 2 ** 20 // max(per_input, 1))))
    task = progress.add_task("sensitivity", total=len(layers)) if progress is not None else None  # type: ignore
    for i, layer in enumerate(layers):
        if deadline is not None and out and time.perf_counter() > deadline:
            break
        policy = Policy(layers={la.name: (mode if la is layer else "float") for la in layers},
                        calibration=calibration, label=f"only {layer.name}")
        if n < len(scorer.x):
            c = scorer.proxy(policy, f"sens-{i:03d}", n)
        else:
            c = scorer.score(policy, f"sens-{i:03d}", time_it=False)
            c.path.unlink(missing_ok=True)
        out.append(LayerSensitivity(layer, c.drop, c.sqnr_db))
        if task is not None:
            progress.advance(task)  # type: ignore[attr-defined]
    if task is not None:
        progress.remove_task(task)  # type: ignore[attr-defined]
    return out


def ranking(sens: list[LayerSensitivity]) -> list[str]:
    """Layer names, most sensitive first."""
    return [s.layer.name for s in sorted(sens, key=lambda s: -s.score())]


def onnx_latency_shares(float_onnx: Path, layers: list[Layer], x: np.ndarray, workdir: Path, runs: int = 20,
                        threads: int = 1) -> dict[str, float]:
    """Each layer's share of the float model's kernel time, from ONNX Runtime's own profiler.

    Profiled at the basic optimisation level: the extended level fuses Conv+Relu and renames the fused node after
    its output, which would hide the layer; basic keeps one kernel per layer, so shares are of the unfused graph.
    """
    import onnxruntime as ort

    workdir.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / "ortprof")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(float_onnx), opts, providers=["CPUExecutionProvider"])
    from edgekit.data import Inputs

    inp = sess.get_inputs()[0]
    static = all(isinstance(d, int) and d > 0 for d in inp.shape)
    if isinstance(x, Inputs):
        feed = x.row(0)
    else:
        xi = x[:1].reshape(inp.shape) if static and x[:1].size == int(np.prod(inp.shape)) else x[:1]
        feed = {inp.name: np.ascontiguousarray(xi, np.float32)}
    for _ in range(runs):
        sess.run(None, feed)
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink(missing_ok=True)
    per_node: dict[str, float] = {}
    total = 0.0
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        per_node[node] = per_node.get(node, 0.0) + ev.get("dur", 0)
        total += ev.get("dur", 0)
    if total <= 0:
        return {}
    return {la.name: per_node.get(la.node, 0.0) / total for la in layers}
