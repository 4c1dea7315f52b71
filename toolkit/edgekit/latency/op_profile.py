"""Where the time goes, per layer: per-operator profiles of measured artifacts, as a report table and a plot.

A runtime module offers per-operator times by defining `per_op_profile(path, x, threads, runs, warmup)` (ExecuTorch:
ETDump with the XNNPACK delegate's operator events); a device harness returns them with its timing. Rows are grouped
by layer (the torch module an operator belongs to; operators XNNPACK adds itself keep their XNNPACK name), and when
the target has a latency profile whose predictor covers the runtime, each layer's predicted time is set beside the
measured one (edgekit.latency.predictor), so the predictor is checked per layer, not only per model.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.report import Artifact

TOP = 15
PROFILE_RUNS = 20


def runtime_profiler(runtime: str) -> Any:
    """The runtime module's `per_op_profile`, or None when the runtime offers no per-operator times."""
    try:
        module = importlib.import_module(f"edgekit.runtimes.{runtime.replace('-', '_')}")
    except ImportError:
        return None
    return getattr(module, "per_op_profile", None)


def by_layer(per_op: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Operator rows summed per layer, in execution order: [{"layer", "ops", "ms", "share"}]."""
    groups: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for op in per_op:
        key = op.get("layer") or f"[{op['type']}]"
        g = groups.setdefault(key, {"layer": key, "ops": [], "ms": 0.0})
        g["ops"].append(op["type"])
        g["ms"] += float(op["ms"])
    total = sum(g["ms"] for g in groups.values()) or 1.0
    out = []
    for g in groups.values():
        kinds = list(dict.fromkeys(g["ops"]))
        out.append({"layer": g["layer"], "ops": ", ".join(kinds), "ms": round(g["ms"], 5),
                    "share": round(g["ms"] / total, 4)})
    return out


def profile_artifacts(arts: list[Artifact], root: Path, x: Any, threads: int, runs: int = PROFILE_RUNS) -> None:
    """Adds per_op (and per_layer) to the latency of every measured artifact (files under `root`) whose runtime has a
    profiler, timed apart from the latency runs."""
    for a in arts:
        profiler = runtime_profiler(a.runtime)
        if a.latency.source != "measured" or profiler is None:
            continue
        a.latency.extra.update(per_op_fields(profiler(root / a.path, x, threads, runs, 3)))


def per_op_fields(prof: dict[str, Any]) -> dict[str, Any]:
    """The latency record's per-operator fields from a runtime profile (see runtimes.executorch.per_op_profile)."""
    ops = prof["per_op"]
    return {"per_op": ops, "per_layer": by_layer(ops), "per_op_source": prof.get("source"),
            "per_op_runs": prof.get("runs"), "per_op_mapped": prof.get("mapped"),
            "per_op_sum_ms": round(sum(o["ms"] for o in ops), 5), "per_op_execute_ms": prof.get("execute_ms"),
            "per_op_note": prof.get("note")}


def markdown(a: Artifact, check: dict[str, Any] | None) -> str:
    lat = {**a.latency.extra, "runtime": a.latency.runtime, "device": a.latency.device, "p50_ms": a.latency.p50_ms}
    layers = lat["per_layer"]
    pred = {r["layer"]: r for r in (check or {}).get("layers", [])}
    head = (f"**`{a.path}`** ({lat.get('runtime')}, {lat.get('device')}): {len(lat['per_op'])} operators in "
            f"{len(layers)} layers; operator times add up to {lat['per_op_sum_ms']:.4g} ms of "
            f"{lat['per_op_execute_ms'] or float('nan'):.4g} ms per profiled run (end-to-end p50 "
            f"{lat.get('p50_ms')} ms, timed without profiling). Source: {lat.get('per_op_source')}. "
            f"{lat.get('per_op_note') or ''}.")
    if lat["per_op_execute_ms"] and lat["per_op_sum_ms"] < 0.5 * lat["per_op_execute_ms"]:
        head += (" The operators are too short for the profiler's 1 us resolution: most of the run is not "
                 "attributed, so the shares below are rough.")
    cols = "| # | layer | operators | ms | share | cumulative |"
    rule = "|---:|---|---|---:|---:|---:|"
    if check:
        cols += " predicted ms | error |"
        rule += "---:|---:|"
        head += (f" Predictor check ({check['device']}, {check['basis']}): per-layer median |error| "
                 f"{check['median_abs_err_pct']}% over {check['layers_compared']} layers; whole model "
                 f"{check['model_err_pct']}%.")
    order = {r["layer"]: i for i, r in enumerate(layers)}
    rows = sorted(layers, key=lambda r: -r["ms"])[:TOP]
    lines = [head, "", cols, rule]
    cum = 0.0
    for r in rows:
        cum += r["share"]
        line = (f"| {order[r['layer']]} | `{r['layer']}` | {r['ops']} | {r['ms']:.4f} | {100 * r['share']:.1f}% | "
                f"{100 * cum:.1f}% |")
        if check:
            p = pred.get(r["layer"])
            line += f" {p['predicted_ms']:.4f} | {p['err_pct']:+.0f}% |" if p else " – | – |"
        lines.append(line)
    if len(layers) > TOP:
        rest = f"| | {len(layers) - TOP} more layers | | | {100 * (1 - cum):.1f}% | |"
        lines.append(rest + (" | |" if check else ""))
    return "\n".join(lines)


def plot_layers(path: Path, arts: list[Artifact]) -> Path | None:
    """Time per layer in execution order, one panel per profiled artifact."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from edgekit.fileio import atomic_path

    colors = {"Convolution": "tab:blue", "Fully Connected": "tab:orange", "Add": "tab:green", "Mean": "tab:purple"}
    labels = ["convolution (KxK, depthwise)", "GEMM (1x1 conv, linear)", "add", "mean", "other"]
    fig, axes = plt.subplots(len(arts), 1, figsize=(10, 2.6 * len(arts)), squeeze=False)
    for ax, a in zip(axes[:, 0], arts, strict=True):
        layers = a.latency.extra["per_layer"]
        col = [next((c for k, c in colors.items() if r["ops"].startswith(k)), "tab:gray") for r in layers]
        ax.bar(range(len(layers)), [r["ms"] for r in layers], color=col)
        ax.set_title(f"{a.path} ({a.latency.runtime})", fontsize=9)
        ax.set_ylabel("ms per run")
        ax.set_xlabel("layer, in execution order")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in [*colors.values(), "tab:gray"]]
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.6 * len(arts))))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
