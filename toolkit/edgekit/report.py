"""The run's records: report.json (the contract other tools and CI read), report.md and plots.

report.json fields are only added, never removed or renamed, without bumping SCHEMA.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.errors import InputError
from edgekit.fileio import atomic_path, write_json, write_text

SCHEMA = 1


def new_report(**header: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "edgekit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **header, "stages": [], "artifacts": []}


def load_report(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise InputError(f"no report.json in {run_dir}; is it a run folder written by `edgekit compress --out`?")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); the run folder is damaged") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise InputError(f"{path} has schema {report.get('schema') if isinstance(report, dict) else '?'}; "
                         f"this edgekit reads schema {SCHEMA}")
    return report


def save_report(run_dir: str | Path, report: dict[str, Any], markdown: bool = True) -> Path:
    """Writes report.json, and report.md with its plot, atomically."""
    run_dir = Path(run_dir)
    report["summary"] = summarize(report)
    path = write_json(run_dir / "report.json", report)
    if markdown:
        write_markdown(run_dir, report)
    return path


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Flat before/after figures that CI gates address by simple names (`--fail-on 'quality_drop>1.0'`).

    quality_* come from the last stage whose metrics carry quality_after (e.g. quantize), else from baseline;
    quality_drop is in points. p50_ms is the best latency over all artifacts (measured or predicted only).
    """
    metric = (report.get("data") or {}).get("quality_metric")
    stages = report.get("stages", [])
    base = next((st.get("metrics", {}) for st in stages if st.get("name") == "baseline"), {})
    after = next((st.get("metrics", {}) for st in reversed(stages) if "quality_after" in st.get("metrics", {})), {})
    q_before = after.get("quality_before", base.get(metric))
    q_after = after.get("quality_after", q_before)
    drop = after.get("quality_drop")
    if drop is None and q_before is not None and q_after is not None:
        drop = round(100.0 * (q_before - q_after), 4)
    arts = report.get("artifacts", [])
    fp32 = [a for a in arts if a.get("precision") == "fp32"]
    other = [a for a in arts if a.get("precision") != "fp32"] or fp32

    def p50(group: list[dict[str, Any]]) -> float | None:
        v = [a["latency"]["p50_ms"] for a in group if (a.get("latency") or {}).get("source") in ("measured", "predicted")
             and a["latency"].get("p50_ms") is not None]
        return min(v) if v else None

    def size(group: list[dict[str, Any]]) -> int | None:
        v = [a["size_bytes"] for a in group if a.get("size_bytes") is not None]
        return min(v) if v else None

    sources = sorted({(a.get("latency") or {}).get("source", "none") for a in arts})
    return {"quality_metric": metric, "quality_before": q_before, "quality_after": q_after, "quality_drop": drop,
            "size_before_bytes": size(fp32), "size_after_bytes": size(other), "p50_ms_before": p50(fp32),
            "p50_ms_after": p50(other), "p50_ms": p50(arts), "latency_sources": sources,
            "artifacts_failed": sum((a.get("verification") or {}).get("passed") is False for a in arts)}


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


def render_markdown(report: dict[str, Any], plot_name: str | None = None) -> str:
    """Markdown for people and CI job summaries."""
    lines = [f"# edgekit report: {report.get('model')} → {report.get('target')}", ""]
    lines += [f"- edgekit {report.get('edgekit_version')}, created {report.get('created')}",
              f"- weights: {report.get('weights', '–')}",
              f"- data: {report.get('data', {}).get('description', '–')}; quality metric: "
              f"**{report.get('data', {}).get('quality_metric', '–')}**",
              f"- threads: {report.get('threads')}", ""]
    if report.get("import"):
        from edgekit.importers import describe_import

        lines.insert(-1, f"- import: {describe_import(report['import'])}")
    target = report.get("target_facts", {})
    if target:
        lines += [f"Target **{report.get('target')}**: {target.get('description', '')} ({target.get('cpu')}, "
                  f"{target.get('cores')} cores, {', '.join(target.get('simd', [])) or 'no SIMD listed'})", ""]
    summ = report.get("summary") or summarize(report)
    lines += ["## Summary", "", "| | before | after |", "|---|---:|---:|",
              f"| quality ({summ['quality_metric']}) | {_fmt(summ['quality_before'])} | {_fmt(summ['quality_after'])} "
              f"(drop {_fmt(summ['quality_drop'])} pts) |",
              f"| size | {_size(summ['size_before_bytes'])} | {_size(summ['size_after_bytes'])} |",
              f"| best p50 ms ({', '.join(summ['latency_sources'])}) | {_fmt(summ['p50_ms_before'])} | "
              f"{_fmt(summ['p50_ms_after'])} |", ""]
    lines += ["## Stages", "", "| stage | seconds | params (nonzero / total) | metrics |", "|---|---:|---:|---|"]
    for st in report.get("stages", []):
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in (st.get("metrics") or {}).items())
        params = f"{_fmt(st.get('params_nonzero'))} / {_fmt(st.get('params_total'))}" if st.get("params_total") else "–"
        lines.append(f"| {st['name']} | {_fmt(st.get('seconds'), 3)} | {params} | {metrics or '–'} |")
    lines += ["", "## Artifacts", "",
              "| artifact | format | size | verified (max abs err, top-1) | latency p50 / p90 | source | device / runtime |",
              "|---|---|---:|---|---:|---|---|"]
    for a in report.get("artifacts", []):
        v = a.get("verification") or {}
        lat = a.get("latency") or {}
        ver = (f"{'✅' if v.get('passed') else '❌'} {_fmt(v.get('max_abs_err'), 3)}, {_fmt(v.get('top1_agreement'), 3)}"
               if v else "not verified")
        p = (f"{_fmt(lat.get('p50_ms'), 4)} / {_fmt(lat.get('p90_ms'), 4)} ms" if lat.get("p50_ms") is not None else "–")
        dev = f"{lat.get('device', '–')} / {lat.get('runtime', a.get('runtime', '–'))}"
        lines.append(f"| `{a['path']}` | {a['format']} | {_size(a.get('size_bytes'))} | {ver} | {p} | "
                     f"{lat.get('source', 'none')} | {dev} |")
    notes = [f"- `{a['path']}`: {lat['reason']}" for a in report.get("artifacts", [])
             if (lat := a.get("latency") or {}).get("reason")]
    if notes:
        lines += ["", "Latency notes:", *notes]
    for section in report.get("sections", []):
        lines += ["", f"## {section['title']}", "", section["markdown"]]
    if plot_name:
        lines += ["", f"![size and latency per artifact]({plot_name})"]
    lines.append("")
    return "\n".join(lines)


def write_markdown(run_dir: str | Path, report: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    plot = plot_artifacts(run_dir / "artifacts.png", report)
    return write_text(run_dir / "report.md", render_markdown(report, plot.name if plot else None))


def plot_artifacts(path: Path, report: dict[str, Any]) -> Path | None:
    """A bar chart of size and p50 latency per artifact."""
    arts = report.get("artifacts", [])
    if not arts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(a["path"]).name for a in arts]
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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
