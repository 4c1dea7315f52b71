"""report.md and its plots, rendered from report.json's JSON form (so `edgekit report` can render them again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.chain import chain, dynamic_signature, fill_chain, quality_drop, summarize
from edgekit.fileio import atomic_path, write_text

RUNTIME_MARKERS = {"onnxruntime": "o", "litert": "s", "litert (sparse)": "D", "tvm": "^", "onnxruntime-web": "v"}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _unit(report: dict[str, Any]) -> str:
    return (report.get("quality") or {}).get("unit", "pts")


def _unit_word(report: dict[str, Any]) -> str:
    return "point" if _unit(report) == "pts" else _unit(report)


def _header(report: dict[str, Any]) -> list[str]:
    data = report.get("data") or {}
    lines = [f"# edgekit report: {report.get('model')} → {report.get('target')}", "",
             f"- edgekit {report.get('edgekit_version')}, created {report.get('created')}",
             f"- weights: {report.get('weights', '–')}",
             f"- data: {data.get('description', '–')}; quality metric: **{data.get('quality_metric', '–')}**"
             + (f" ({(report.get('quality') or {}).get('why')})" if (report.get("quality") or {}).get("why") else ""),
             f"- threads: {report.get('threads')}", ""]
    if report.get("import"):
        lines.insert(-1, f"- import: {describe_import(report['import'])}")
    route = report.get("route") or {}
    if route.get("name") not in (None, "torch"):
        lines.insert(-1, f"- route: **{route['name']}** (no torch model: {route.get('why')}); stages that need a "
                         f"torch model are refused; every artifact is verified against {route.get('reference')}")
    target = report.get("target_facts", {})
    if target:
        lines += [f"Target **{report.get('target')}**: {target.get('description', '')} ({target.get('cpu')}, "
                  f"{target.get('cores')} cores, {', '.join(target.get('simd', [])) or 'no SIMD listed'})", ""]
    return lines


def describe_import(info: dict[str, Any]) -> str:
    """One Markdown line for the report: what the file was, which passes applied, how the check came out."""
    if info.get("format") == "tflite":
        return (f"TFLite file{' (' + info['producer'] + ')' if info.get('producer') else ''}, "
                f"{info.get('nodes_in_file')} ops, input {info.get('input', {}).get('shape')}: used as it is")
    passes = ", ".join(p["pass"] for p in info.get("passes", [])) or "none"
    line = (f"{info.get('format', '?').upper()} file from {info.get('producer') or 'an unnamed exporter'} (opset "
            f"{info.get('opset')}), {info.get('nodes_in_file')} -> {info.get('nodes_converted')} nodes; passes: {passes}")
    check = info.get("check")
    if check:
        agree = "" if check.get("top1_agreement") is None else f", top-1 agreement {check['top1_agreement']:.4g}"
        line += (f"; checked against {check['reference']} on {check['inputs']} {check['data']}: max abs error "
                 f"{check['max_abs_err']:.3g}{agree} ({'passed' if check['passed'] else 'FAILED'})")
    return line


def _plan(report: dict[str, Any]) -> list[str]:
    plan = report.get("plan")
    if not plan:
        return []
    lines = ["## Plan (--recipe auto)", "", plan.get("summary", ""), "", "| technique | used | why |", "|---|---|---|"]
    for t in plan.get("techniques", []):
        lines.append(f"| {t['name']} | {'yes' if t['used'] else 'no'} | {t['why']} |")
    return lines + [""]


def _summary(report: dict[str, Any]) -> list[str]:
    s = report.get("summary") or summarize(report)
    drop = f"(drop {_fmt(s.get('quality_drop'))} {_unit(report)})" if s.get("quality_drop") is not None else ""
    budget = s.get("budget")
    if report.get("schema", 2) < 2:
        intro = ("A schema-1 report: the summary as it was written (before = quantize's input, or the final model "
                 "without quantize).")
    else:
        intro = "Before: the model as loaded. After: " + (
            f"`{s['artifact']}`, the fastest verified artifact" + (
                " that keeps the model's signature" if s.get("signature_kept") and dynamic_signature(report) else "")
            + (f" within the {budget}-{_unit_word(report)} quality budget" if budget is not None else "")
            if s.get("artifact") else "the model after the last stage (no verified artifact)") + "."
    lines = ["## Summary", "", intro, "",
             "| | before | after |", "|---|---:|---:|",
             f"| quality ({s.get('quality_metric')}) | {_fmt(s.get('quality_before'))} | "
             f"{_fmt(s.get('quality_after'))} {drop} |",
             f"| size | {_size(s.get('size_before_bytes'))} | {_size(s.get('size_after_bytes'))} |",
             f"| best p50 ms ({', '.join(s.get('latency_sources') or [])}) | {_fmt(s.get('p50_ms_before'))} | "
             f"{_fmt(s.get('p50_ms_after'))}" + (f" ({s['speedup']:.2f}x)" if s.get("speedup") else "") + " |", ""]
    lines += _precision_note(report, s) + _drop_in_note(s)
    if s.get("budget_met") is False:
        lines += [f"**No verified artifact is within the {budget}-{_unit_word(report)} budget**: the one with the best quality is "
                  "shown.", ""]
    return lines


def _drop_in_note(s: dict[str, Any]) -> list[str]:
    """What the summary says when the model leaves dimensions dynamic and an artifact does not keep them."""
    lines = []
    if s.get("signature_kept") is False:
        lines.append(f"**The recommended artifact does not keep the model's signature** ({s.get('signature_note')}): "
                     "no artifact does; it will not drop into a program that feeds other shapes or looks its "
                     "inputs up by name.")
    faster = s.get("faster_not_drop_in")
    if faster:
        lines.append(f"`{faster['artifact']}` is faster ({_fmt(faster.get('p50_ms'))} ms) but is not recommended: it "
                     f"does not keep the model's signature ({faster.get('why')}).")
    return [*lines, ""] if lines else []


def _skipped(report: dict[str, Any]) -> list[str]:
    """What a stage could not make or run, one line each: the run went on with the rest."""
    skipped = report.get("skipped") or []
    if not skipped:
        return []
    return ["## Skipped", "", "| stage | format | why |", "|---|---|---|",
            *[f"| {s['stage']} | {s['format']} | {s['why']} |" for s in skipped], ""]


def _signature(report: dict[str, Any]) -> list[str]:
    """The loaded model's inputs and outputs, and which artifacts kept them."""
    sig = report.get("signature")
    if not sig:
        return []

    def row(kind: str, t: dict[str, Any]) -> str:
        shape = ", ".join(str(d) if d is not None else "?" for d in t["shape"])
        return f"| {kind} | `{t['name']}` | {t['dtype']} | [{shape}] | {', '.join(map(str, t['dynamic'])) or '–'} |"

    lines = ["## Signature", "", f"The model as loaded ({sig.get('source')}" + (
        f", opset {sig['opset']}" if sig.get("opset") else "") + "); every artifact keeps it where its format can.", "",
             "| | name | dtype | shape | dynamic axes |", "|---|---|---|---|---|",
             *[row("input", t) for t in sig["inputs"]], *[row("output", t) for t in sig["outputs"]], ""]
    arts = [a for a in [*(report.get("baseline") or {}).get("artifacts", []), *report.get("artifacts", [])]
            if a.get("signature")]
    if arts:
        lines += ["| artifact | signature kept | why not |", "|---|---|---|"]
        lines += [f"| `{a['path']}` | {'yes' if a['signature'].get('kept') else '**no**'} | "
                  f"{a['signature'].get('why') or ''} |" for a in arts]
        lines.append("")
    return lines


def _precision_note(report: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Says so when INT8 artifacts exist but a float one is recommended because none of them was faster."""
    arts = [a for a in report.get("artifacts", []) if (a.get("latency") or {}).get("p50_ms") is not None]
    quant = [a for a in arts if a.get("precision") in ("int8", "mixed")]
    rec = next((a for a in arts if a["path"] == s.get("artifact")), None)
    if not quant or rec is None or rec.get("precision") != "fp32":
        return []
    q = min(quant, key=lambda a: a["latency"]["p50_ms"])
    if q["latency"]["p50_ms"] < rec["latency"]["p50_ms"]:
        return []
    return [f"No INT8 artifact is faster than float here: the fastest, `{q['path']}`, takes "
            f"{_fmt(q['latency']['p50_ms'])} ms against {_fmt(rec['latency']['p50_ms'])} ms for `{rec['path']}`.", ""]


def _chain(report: dict[str, Any], plot: str | None) -> list[str]:
    points = chain(report)
    if not points:
        return []
    q0 = points[0][1].get("quality")
    lines = ["## Chain", "", "Each stage that changed the model, measured on the same held-out inputs as the "
             "loaded model; size and p50 where an artifact of that model exists.", "",
             f"| after | quality | Δ {_unit(report)} | params nonzero / total | size | best p50 ms | runtimes |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label, p in points:
        q = p.get("quality")
        d = quality_drop(report, q0, q)
        delta = f"{-d:+.2f}" if d is not None else "–"
        runtimes = ", ".join(f"{k}: {_fmt(v.get('p50_ms'))}" for k, v in (p.get("by_runtime") or {}).items())
        lines.append(f"| {label} | {_fmt(q)} | {delta} | {_fmt(p.get('nonzeros'))} / {_fmt(p.get('params'))} | "
                     f"{_size(p.get('size_bytes') or p.get('weights_bytes'))} | {_fmt(p.get('p50_ms'))} | "
                     f"{runtimes or '–'} |")
    if plot:
        lines += ["", f"![quality against latency and size, one point per stage]({plot})"]
    return lines + [""]


def _stages(report: dict[str, Any]) -> list[str]:
    lines = ["## Stages", "", "Peak memory: the peak resident memory of the run's process or of its largest child "
             "process (converters run in children that exit) when the stage ended; it never falls, so the stage where "
             "it rises is the one that needed it, and the work named beside it is the child that did.", "",
             "| stage | seconds | peak memory MB | params (nonzero / total) | metrics |", "|---|---:|---:|---:|---|"]
    for st in report.get("stages", []):
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in (st.get("metrics") or {}).items())
        params = f"{_fmt(st.get('params_nonzero'))} / {_fmt(st.get('params_total'))}" if st.get("params_total") else "–"
        peak, kids = _fmt(st.get("peak_rss_mb")), st.get("children") or {}
        if kids and kids.get("peak_rss_mb") == st.get("peak_rss_mb"):
            peak += f" ({kids['largest']})"
        lines.append(f"| {st['name']} | {_fmt(st.get('seconds'), 3)} | {peak} | {params} | {metrics or '–'} |")
    return lines


def _artifact_rows(arts: list[dict[str, Any]]) -> list[str]:
    rows = []
    for a in arts:
        v = a.get("verification") or {}
        lat = a.get("latency") or {}
        q = (v.get("quality") or {}).get("value")
        ver = (f"{'✅' if v.get('passed') else '❌'} {_fmt(v.get('max_abs_err'), 3)}, {_fmt(v.get('top1_agreement'), 3)}"
               if v else "not verified")
        p = f"{_fmt(lat.get('p50_ms'), 4)} / {_fmt(lat.get('p90_ms'), 4)} ms" if lat.get("p50_ms") is not None else "–"
        dev = f"{lat.get('device', '–')} / {lat.get('runtime', a.get('runtime', '–'))}"
        rows.append(f"| `{a['path']}` | {a['format']} {a.get('precision', '')} | {_size(a.get('size_bytes'))} | "
                    f"{_fmt(q)} | {ver} | {p} | {lat.get('source', 'none')} | {dev} |")
    return rows


def _artifacts(report: dict[str, Any]) -> list[str]:
    head = ["| artifact | format | size | quality | verified (max abs err, top-1) | latency p50 / p90 | source | "
            "device / runtime |", "|---|---|---:|---:|---|---:|---|---|"]
    lines = ["", "## Artifacts", "", *head, *_artifact_rows(report.get("artifacts", []))]
    base = (report.get("baseline") or {}).get("artifacts") or []
    if base:
        lines += ["", "The model as loaded (baseline/, for the before figures; not for deployment):", "", *head,
                  *_artifact_rows(base)]
    files = report.get("files") or []
    if files:
        lines += ["", "Other files in artifacts/:", *(f"- `{f['path']}` ({f['kind']}, {_size(f.get('size_bytes'))})"
                                                      for f in files)]
    notes = [f"- `{a['path']}`: {lat['reason']}" for a in report.get("artifacts", []) + base
             if (lat := a.get("latency") or {}).get("reason")]
    if notes:
        lines += ["", "Latency notes:", *notes]
    sup = report.get("superseded") or []
    if sup:
        lines += ["", "Superseded (stale, kept under superseded/ for inspection; do not deploy):",
                  *(f"- `{s['path']}` ({s['kind']}): {s['reason']}" for s in sup)]
    removed = report.get("removed") or []
    if removed:
        lines += ["", f"Removed from an earlier run in this folder: {', '.join(f'`{r}`' for r in removed)}"]
    return lines


def render_markdown(report: dict[str, Any], plot_name: str | None = None, chain_plot: str | None = None) -> str:
    """Markdown for people and CI job summaries."""
    lines = (_header(report) + _plan(report) + _summary(report) + _skipped(report) + _signature(report)
             + _chain(report, chain_plot) + _stages(report))
    lines += _artifacts(report)
    for section in report.get("sections", []):
        lines += ["", f"## {section['title']}", "", section["markdown"]]
    if plot_name:
        lines += ["", f"![size and latency per artifact]({plot_name})"]
    lines.append("")
    return "\n".join(lines)


def write_markdown(run_dir: Path, report: dict[str, Any]) -> Path:
    if report.get("schema", 2) >= 2:
        report = fill_chain(report)
    plot = plot_artifacts(run_dir / "artifacts.png", report)
    cplot = plot_chain(run_dir / "chain.png", report)
    return write_text(run_dir / "report.md", render_markdown(report, plot.name if plot else None,
                                                             cplot.name if cplot else None))


def _save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_chain(path: Path, report: dict[str, Any]) -> Path | None:
    """Quality against p50 and against size: one point per chain step and runtime (marker), the loaded model in
    black. Steps without an artifact appear on the size panel only, at their dense float32 weight size (hollow)."""
    points = chain(report)
    if len(points) < 2:
        path.unlink(missing_ok=True)
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    trails: dict[str, list[tuple[float | None, float | None, float]]] = {}
    for k, (label, p) in enumerate(points):
        color = "black" if k == 0 else colors[(k - 1) % len(colors)]
        q = p.get("quality")
        if q is None:
            continue
        entries = p.get("by_runtime") or {}
        for rt, e in entries.items():
            marker = RUNTIME_MARKERS.get(rt, "P")
            if e.get("p50_ms") is not None:
                ax1.scatter(e["p50_ms"], e.get("quality") or q, color=color, marker=marker, s=55,
                            label=f"{label} · {rt}")
            if e.get("size_bytes"):
                ax2.scatter(e["size_bytes"] / 1e3, e.get("quality") or q, color=color, marker=marker, s=55)
            trails.setdefault(rt, []).append((e.get("p50_ms"), (e.get("size_bytes") or 0) / 1e3 or None,
                                              e.get("quality") or q))
        if not entries and p.get("weights_bytes"):
            ax2.scatter(p["weights_bytes"] / 1e3, q, facecolors="none", edgecolors=color, marker="o", s=55,
                        label=f"{label} (weights, no artifact)")
    for trail in trails.values():  # each runtime's path through the chain
        for ax, i in ((ax1, 0), (ax2, 1)):
            xy = [(t[i], t[2]) for t in trail if t[i] is not None]
            if len(xy) > 1:
                ax.plot(*zip(*xy, strict=True), color="#999999", linewidth=0.8, zorder=0)
    ax1.set_xlabel("p50 latency (ms)")
    ax1.set_ylabel(f"quality ({(report.get('data') or {}).get('quality_metric')})")
    ax1.set_title("quality vs latency (" + ", ".join(summarize(report).get("latency_sources") or ["none"]) + ")")
    ax2.set_xlabel("size (kB)")
    ax2.set_title("quality vs size")
    handles, labels = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    if handles or h2:
        fig.legend(handles + h2, labels + l2, loc="center right", fontsize=7, frameon=False)
    if not handles:
        ax1.text(0.5, 0.5, "no latency measured for this target", ha="center", transform=ax1.transAxes)
    fig.suptitle(f"{report.get('model')} → {report.get('target')}: the chain")
    return _save(fig, path, rect=(0, 0, 0.78, 1))


def plot_artifacts(path: Path, report: dict[str, Any]) -> Path | None:
    """A bar chart of size and p50 latency per artifact (the loaded model's float artifacts included)."""
    arts = report.get("artifacts", []) + ((report.get("baseline") or {}).get("artifacts") or [])
    if not arts:
        return None
    plt = _pyplot()
    names = [a["path"].removeprefix("artifacts/") for a in arts]
    sizes = [a.get("size_bytes", 0) / 1e6 for a in arts]
    p50 = [(a.get("latency") or {}).get("p50_ms") for a in arts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(arts) + 2.2))
    ax1.barh(names, sizes, color="#4c72b0")
    ax1.set_xlabel("size (MB)")
    ax1.set_title("artifact size")
    ax2.barh(names, [v or 0 for v in p50], color=["#dd8452" if v is not None else "#cccccc" for v in p50])
    for i, v in enumerate(p50):
        if v is None:
            ax2.text(0, i, " not measured", va="center", fontsize=8)
    sources = {(a.get("latency") or {}).get("source", "none") for a in arts}
    ax2.set_xlabel("p50 latency (ms)")
    ax2.set_title(f"latency ({', '.join(sorted(sources))})")
    ax2.set_yticks([])
    fig.suptitle(f"{report.get('model')} → {report.get('target')}")
    return _save(fig, path)
