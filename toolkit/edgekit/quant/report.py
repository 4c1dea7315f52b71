"""Markdown and the Pareto plot for quantisation searches (sections of report.md)."""

from __future__ import annotations

from pathlib import Path

from edgekit.fileio import atomic_path
from edgekit.quant.driver import SearchResult
from edgekit.quant.policy import FLOAT


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def plot_pareto(path: Path, results: list[SearchResult], title: str) -> Path | None:
    """Quality drop against latency (or size when latency is unavailable), one panel per runtime."""
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        use_lat = all(c.p50_ms is not None for c in r.candidates)
        xs = (lambda c: c.p50_ms) if use_lat else (lambda c: c.size_mb)
        ax.scatter([xs(c) for c in r.candidates], [c.drop for c in r.candidates], s=14, c="#bbbbbb",
                   label="candidates")
        front = sorted(r.front, key=xs)
        ax.plot([xs(c) for c in front], [c.drop for c in front], "o-", c="#4c72b0", ms=5, label="Pareto front")
        ax.scatter([xs(r.int8)], [r.int8.drop], marker="s", s=60, c="#dd8452", label="full INT8", zorder=3)
        ax.scatter([xs(r.chosen)], [r.chosen.drop], marker="*", s=160, c="#c44e52", label="chosen", zorder=4)
        for name, c in r.extra.items():
            ax.scatter([xs(c)], [c.drop], marker="D", s=40, c="#55a868", label=name, zorder=3)
        src = r.latency_source if use_lat else "unavailable: size shown"
        ax.set_xlabel(f"p50 latency (ms, {src})" if use_lat else "size (MB)")
        ax.set_ylabel(f"quality drop ({r.metric}, {'points' if r.unit == 'pts' else r.unit})")
        ax.set_title(f"{r.fmt}: {r.runtime}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def markdown(r: SearchResult, plot_name: str | None, max_rows: int = 60) -> str:
    """One runtime's section: before/after table, the choice and why, the per-layer table, the front."""
    q = r.float_quality
    lat_note = {"measured": "measured on this machine, interleaved", "predicted": "predicted from the target's "
                "profile", "none": "unavailable (no device, no profile)"}[r.latency_source]
    lines = [f"Backend **{r.backend}**, runtime **{r.runtime}**; quality = {r.metric} against the float artifact "
             f"in the same runtime; latency {lat_note}.", "",
             f"| model | size | p50 ms | quality | drop ({r.unit}) | SQNR dB |", "|---|---:|---:|---:|---:|---:|",
             f"| float | {_mb(r.float_size)} | {_ms(r.p50('float'))} | {q:.4f} | 0 | – |"]
    rows = [("full INT8", r.int8, r.p50("int8")), *((k, c, c.p50_ms) for k, c in r.extra.items()),
            ("**chosen policy**", r.chosen, r.p50("chosen"))]
    for name, c, p50 in rows:
        lines.append(f"| {name} | {_mb(c.size_bytes)} | {_ms(p50)} | {c.quality:.4f} | {c.drop:.2f} | "
                     f"{c.sqnr_db:.1f} |")
    v = r.verdict()
    lines += ["", f"Chosen: {r.chosen.policy.describe()} ({r.chosen.policy.label}).", f"Why: {r.reason}.",
              f"Constraints met: {'yes' if r.constraints_met else '**no**'}. Against full INT8: "
              f"{_ms(v['speed_vs_int8'])}x its speed, {r.chosen.drop:.2f} vs {r.int8.drop:.2f} points of drop "
              f"(bar: >= 0.9x speed and <= half the drop: {'met' if v['met'] else '**not met**'}).",
              f"Search: {r.evaluated} candidates evaluated in {r.search_seconds:.1f} s."]
    if not v["met"] and len(r.front) > 1:
        lines.append(_no_policy_note(r))
    if r.sensitivity:
        lines += ["", f"| layer | op | params | choice | drop alone ({r.unit}) | SQNR alone dB | latency share |",
                  "|---|---|---:|---|---:|---:|---:|"]
        for s in r.sensitivity[:max_rows]:
            share = "–" if s.latency_share is None else f"{100 * s.latency_share:.1f}%"
            lines.append(f"| `{s.layer.name}` | {s.layer.op_type} | {s.layer.params} | "
                         f"{r.chosen.policy.mode(s.layer.name)} | {s.drop:.2f} | {s.sqnr_db:.1f} | {share} |")
        if len(r.sensitivity) > max_rows:
            lines.append(f"| … {len(r.sensitivity) - max_rows} more layers in report.json | | | | | | |")
        if len(r.sensitivity) < len(r.int8.policy.layers):  # the full INT8 policy lists every layer
            lines += ["", f"Sensitivity was measured for the first {len(r.sensitivity)} of "
                          f"{len(r.int8.policy.layers)} layers within half the search's time limit (`max_seconds`); "
                          "the others were ranked after them, in model order."]
    lines += ["", "Pareto front (quality drop, latency, size):", "",
              f"| candidate | policy | drop ({r.unit}) | p50 ms | size |", "|---|---|---:|---:|---:|"]
    for c in r.front[:12]:
        lines.append(f"| {c.policy.label} | {c.policy.describe()} | {c.drop:.2f} | {_ms(c.p50_ms)} | "
                     f"{_mb(c.size_bytes)} |")
    if plot_name:
        lines += ["", f"![Pareto front]({plot_name})"]
    return "\n".join(lines)


def _no_policy_note(r: SearchResult) -> str:
    """States with numbers that no evaluated policy meets the bar."""
    fi = r.int8.p50_ms
    if fi is None:
        return "No latency: the speed half of the bar cannot be judged for this target."
    fast = [c for c in r.candidates if c.p50_ms is not None and c.p50_ms <= fi / 0.9]
    best = min(fast, key=lambda c: c.drop) if fast else None
    kept = sum(m == FLOAT for m in best.policy.layers.values()) if best else 0
    if best is None:
        return "No evaluated candidate is within 0.9x of full INT8's speed."
    note = (f"No evaluated policy meets the bar: of the {len(fast)} candidates at >= 0.9x full INT8's speed "
            f"(p50 <= {fi / 0.9:.4g} ms in the search's scale), the lowest drop is {best.drop:.2f} points "
            f"({kept} layers float), above half of full INT8's {r.int8.drop:.2f}.")
    alone = [s.drop for s in r.sensitivity]
    if alone:
        note += (f" Quantising any single layer alone already costs {min(alone):.2f} to {max(alone):.2f} points "
                 f"(half of full INT8's drop: {r.int8.drop / 2:.2f}).")
    if r.noise_floor is not None:
        note += (f" The float model itself loses {r.noise_floor:.2f} points when its input gets noise at 40 dB SNR "
                 "(about one INT8 tensor's quantisation noise): the drop comes from the model's sensitivity, "
                 "so a policy under the bar would have to keep (nearly) every layer float, i.e. run at float speed.")
    return note
