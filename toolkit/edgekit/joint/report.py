"""The joint search's part of the report: the Pareto front (plot) with the chosen point, what every layer got, and
where the search spent its time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.fileio import atomic_path

if TYPE_CHECKING:
    from edgekit.joint.search import JointResult

COLORS = {"onnxruntime": "#4c72b0", "litert": "#dd8452"}


def plot_front(path: Path, r: JointResult, title: str, max_drop: float | None = None) -> Path | None:
    """Quality drop against p50 latency: every evaluated candidate, the front, the unmodified model per runtime, the
    choice; screened-out candidates as ticks on the top edge at their estimated latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [c for c in r.candidates if c.status == "evaluated" and c.p50_ms is not None and c.drop is not None]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for rt, color in COLORS.items():
        pts = [c for c in done if c.decision.runtime == rt]
        if pts:
            ax.scatter([c.p50_ms for c in pts], [c.drop for c in pts], s=18, color=color, alpha=0.6,
                       label=f"candidates ({rt})")
    front = _front_2d(done)
    if front:
        ax.step([c.p50_ms for c in front], [c.drop for c in front], where="post", color="#55a868", linewidth=1.2,
                label="Pareto front (drop, latency)")
    top = max([c.drop for c in done] + [max_drop or 0.0, 1.0])
    screened = [c.screen_ms for c in r.candidates if c.status != "evaluated" and c.screen_ms is not None]
    if screened:
        ax.scatter(screened, [top * 1.05] * len(screened), marker="|", color="#8c8c8c", s=60,
                   label="screened out (estimated latency)")
    for rt, c in r.dense.items():
        if c.p50_ms is not None:
            ax.scatter([c.p50_ms], [0.0], marker="s", s=50, color=COLORS.get(rt, "k"), edgecolor="k",
                       label=f"unmodified, FP32 ({rt})")
    ch = r.chosen
    if ch.p50_ms is not None:
        ax.scatter([ch.p50_ms], [ch.drop], marker="*", s=220, color="#c44e52", edgecolor="k", zorder=5,
                   label="chosen")
    if max_drop is not None:
        ax.axhline(max_drop, color="#c44e52", linestyle=":", linewidth=1, label="max quality drop")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency (ms, {r.latency})")
    ax.set_ylabel("quality drop (points)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _front_2d(cands: list) -> list:
    """Candidates not beaten on both quality drop and latency, fastest first."""
    out, best = [], float("inf")
    for c in sorted(cands, key=lambda c: (c.p50_ms, c.drop)):
        if c.drop < best:
            out.append(c)
            best = c.drop
    return out


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def markdown(r: JointResult, plot_rel: str | None, metric: str) -> str:
    best_rt = min(r.dense, key=lambda k: r.dense[k].p50_ms if r.dense[k].p50_ms is not None else float("inf"))
    t = r.timings
    dense_p50 = min((v["p50_ms"] for k, v in t.items() if k.startswith("dense")), default=None)
    ch = r.chosen
    d = ch.decision
    speed = r.speedup()
    lines = [
        f"Unmodified model's best FP32 artifact: {best_rt}, p50 {_ms(dense_p50)} ms. Chosen: {ch.label} in "
        f"{d.runtime}, p50 {_ms(t.get('chosen', {}).get('p50_ms', ch.p50_ms))} ms"
        + (f" (**{speed:.2f}x** faster)" if speed else "")
        + f", {metric} {ch.quality:.4f} (drop {ch.drop:.2f} ± {ch.drop_se:.2f} pts), {ch.size_bytes / 1e3:.1f} kB, "
        f"{ch.params} parameters; {len(d.widths)} channel groups pruned, {len(d.int8)} of {len(r.space.layers)} "
        "layers INT8"
        + (f", {len(d.sparsity)} layers sparse" if d.sparsity else "") + ".",
        "", f"Why: {r.reason}. Constraints met: {'yes' if r.constraints_met else '**no**'}.", "",
        f"Search: {r.search_seconds:.0f} s, {sum(c.status == 'evaluated' for c in r.candidates)} candidates scored "
        f"({r.finetunes} fine-tunes, {r.measured} latency measurements), {r.screened_out} screened out before "
        f"fine-tuning. Latency: {r.latency}"
        + (f" (each candidate timed back to back with the anchor, the unmodified model in {r.anchor_runtime})"
           if r.latency == "measured" else "") + f"; kept channels are multiples of {r.multiple}.",
    ]
    lines += [x for n in r.notes for x in ("", f"Note: {n}.")]
    if r.search_chosen is not None:
        sc = r.search_chosen
        lines += ["", f"During the search (short fine-tune) the chosen candidate scored {sc.quality:.4f} (drop "
                      f"{sc.drop:.2f} pts); after the final fine-tune {ch.quality:.4f}."]
    if plot_rel:
        lines += ["", f"![Pareto front]({plot_rel})"]
    lines += ["", "| layer | channel group | out channels | kept | precision | sparsity | note |",
              "|---|---|---:|---:|---|---:|---|"]
    for row in r.space.layer_rows(d):
        lines.append(f"| `{row['layer']}` | {('`' + row['group'] + '`') if row['group'] else '–'} | "
                     f"{row['channels'] or '–'} | {row['kept'] or '–'} | {row['precision']} | "
                     f"{100 * row['sparsity']:.0f}% | {row['note']} |")
    lines += ["", "Pareto front (quality drop, latency, size):", "",
              "| candidate | runtime | p50 ms | drop (pts) | ± (1 s.e.) | size kB | groups pruned | INT8 layers |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in r.front[:30]:
        lines.append(f"| {c.label} | {c.decision.runtime} | {_ms(c.p50_ms)} | {c.drop:.2f} | {c.drop_se:.2f} | "
                     f"{c.size_bytes / 1e3:.1f} | {len(c.decision.widths)} | {len(c.decision.int8)} |")
    return "\n".join(lines)
