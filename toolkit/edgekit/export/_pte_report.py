"""report.json metadata and report.md sections for `.pte` artifacts (from the sidecar the export writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit import sidecars

TOP_LAYERS = 12


def artifact_meta(path: Path) -> dict[str, Any]:
    """The artifact record's `executorch` field: delegation and the per-layer accuracy verdict."""
    side = sidecars.read(sidecars.pte(path))
    if not side:
        return {}
    meta = {k: side.get(k) for k in ("delegated_fraction", "delegated_nodes", "portable_nodes",
                                     "delegated_subgraphs", "portable_ops")}
    meta["sidecar"] = sidecars.pte(path).name
    layers = side.get("layers")
    if layers:
        meta["layer_accuracy"] = {k: layers.get(k) for k in ("output_sqnr_db", "output_max_abs_err",
                                                             "probe_vs_artifact_max_abs", "grows", "inputs")}
    return {"executorch": meta}


def report_section(path: Path) -> tuple[str, str]:
    """(title, markdown): what XNNPACK took, what fell back, and the per-layer accuracy in the runtime."""
    side = sidecars.read(sidecars.pte(path)) or {}
    title = f"ExecuTorch: {Path(path).name} ({side.get('precision', '?')})"
    if not side:
        return title, "No sidecar (delegation and per-layer accuracy unknown)."
    return title, "\n\n".join([delegation_markdown(side), accuracy_markdown(side.get("layers"),
                                                                             side.get("layers_skipped"))])


def delegation_markdown(side: dict[str, Any]) -> str:
    n_del, n_port = side.get("delegated_nodes", 0), side.get("portable_nodes", 0)
    frac = side.get("delegated_fraction", 0.0)
    port = side.get("portable_ops") or {}
    fallback = ", ".join(f"{k} x{v}" for k, v in port.items()) or "none"
    lines = [f"XNNPACK delegated **{n_del} of {n_del + n_port}** graph operators ({100 * frac:.1f}%) in "
             f"{side.get('delegated_subgraphs', 0)} subgraph(s); portable-kernel fallbacks: {fallback}.", "",
             "| operator | XNNPACK | portable kernels |", "|---|---:|---:|"]
    names = sorted(set(side.get("delegated_ops") or {}) | set(port))
    for name in names:
        lines.append(f"| `{name}` | {(side.get('delegated_ops') or {}).get(name, 0)} | {port.get(name, 0)} |")
    return "\n".join(lines)


def accuracy_markdown(layers: dict[str, Any] | None, skipped: str | None = None) -> str:
    if not layers:
        return f"Per-layer accuracy: not checked ({skipped or 'no held-out inputs given to the export'})."
    grows = layers.get("grows") or []
    head = (f"Per-layer accuracy ({layers['method']}; {layers['inputs']} held-out inputs): model output SQNR "
            f"**{layers['output_sqnr_db']} dB** (max |err| {layers['output_max_abs_err']:.3g} at max |ref| "
            f"{layers['output_max_abs_ref']:.3g}); the debug build's output differs from the artifact's by at most "
            f"{layers['probe_vs_artifact_max_abs']:.3g}.")
    verdict = ("Layers whose error grows (SQNR drops by >= 3 dB across the layer, to below 60 dB): "
               + (", ".join(f"`{g}`" for g in grows) if grows else "none") + ".")
    rows = [r for r in layers.get("rows", []) if r.get("drop_db") is not None]
    rows.sort(key=lambda r: -r["drop_db"])
    table = ["| layer | input SQNR (dB) | after the layer (dB) | drop (dB) | grows |", "|---|---:|---:|---:|---|"]
    for r in rows[:TOP_LAYERS]:
        table.append(f"| `{r['layer']}` | {r['sqnr_in_db']} | {r['sqnr_out_db']} | {r['drop_db']} | "
                     f"{'**yes**' if r['grows'] else 'no'} |")
    note = f"(the {min(TOP_LAYERS, len(rows))} largest drops of {len(rows)} layers; all in the sidecar)"
    return "\n".join([head, "", verdict, "", *table, "", note])
