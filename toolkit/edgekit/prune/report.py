"""The prune stage's part of the report: accuracy against weights remaining (ticket, re-init, random masks) as a
plot and a table, and a per-layer sparsity table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.fileio import atomic_path

if TYPE_CHECKING:
    from edgekit.prune.layers import LayerPlan

SERIES = (("ticket", "winning ticket", "#4c72b0", "o"), ("reinit", "same mask, random re-init", "#dd8452", "s"),
          ("random_masks", "random mask, same sparsity", "#8c8c8c", "^"))


CHANNEL_LABELS = {"ticket": "structured ticket", "reinit": "same thin network, random re-init",
                  "random_masks": "random channels, same widths"}


def plot_rounds(path: Path, rounds: list[dict[str, Any]], title: str, labels: dict[str, str] | None = None) -> Path:
    """Test accuracy against the percentage of weights remaining (log axis, as in the paper's figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, color, marker in SERIES:
        label = (labels or {}).get(key, label)
        pts = [(100 * r["remaining"], 100 * r[key]) for r in rounds if r.get(key) is not None]
        if key != "ticket" and rounds and rounds[0].get(key) is None and pts:
            pts = [(100.0, 100 * rounds[0]["ticket"]), *pts]  # every curve starts at the dense network
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker=marker, color=color, label=label, markersize=4)
    if rounds:
        dense = 100 * rounds[0]["ticket"]
        ax.axhline(dense - 1, color="#55a868", linestyle=":", linewidth=1, label="dense - 1 point")
    ax.set_xscale("log")
    lo = min((100 * r["remaining"] for r in rounds), default=100.0)
    ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= lo * 0.8] or [100]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def rounds_markdown(rounds: list[dict[str, Any]], plot_rel: str, channels: bool = False) -> str:
    random = "random-channels" if channels else "random-mask"
    extra = " channels remaining (%) |" if channels else ""
    lines = [f"![test accuracy vs weights remaining]({plot_rel})", "",
             f"| round | weights remaining (%) |{extra} ticket acc (%) | re-init acc (%) | {random} acc (%) |",
             "|---:|---:|---:|---:|---:|" + ("---:|" if channels else "")]
    for r in rounds:
        ch = f" {100 * r['channels_remaining']:.2f} |" if channels else ""
        lines.append(f"| {r['round']} | {100 * r['remaining']:.2f} |{ch} {_pct(r['ticket'])} | {_pct(r['reinit'])} | "
                     f"{_pct(r['random_masks'])} |")
    return "\n".join(lines)


def groups_markdown(groups: list[dict[str, Any]], widths: dict[str, int], multiple: int) -> str:
    """Per channel group: the layers it spans, channels before and after, or why it stays."""
    lines = ["| group (root layer) | layers | channels | kept | kept (%) | note |", "|---|---|---:|---:|---:|---|"]
    for g in groups:
        kept = widths.get(g["name"], g["channels"])
        layers = ", ".join(f"`{n}`" for n in g["layers"][:6]) + (" ..." if len(g["layers"]) > 6 else "")
        lines.append(f"| `{g['name']}` | {layers} | {g['channels']} | {kept} | {100 * kept / g['channels']:.0f} | "
                     f"{g['reason']} |")
    lines += ["", f"Kept channel counts are multiples of {multiple} (the target's channel multiple) where a group has "
                  "more channels than that."]
    return "\n".join(lines)


def layers_markdown(sparsity: dict[str, Any], plan: LayerPlan) -> str:
    lines = ["| layer | shape | weights | kept | sparsity (%) | rate per round | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, info in sparsity["layers"].items():
        module = name.removesuffix(".weight")
        note = plan.sparse_ok.get(module, "")
        lines.append(f"| `{module}` | {'x'.join(map(str, info['shape']))} | {info['total']} | {info['nonzero']} | "
                     f"{100 * info['sparsity']:.2f} | {plan.rates[name]:.3g} | {note} |")
    for module, why in plan.dense.items():
        lines.append(f"| `{module}` | | | | 0 (dense) | – | {why} |")
    lines += ["", f"Total: {sparsity['nonzero']} of {sparsity['total']} weights kept "
                  f"({100 * sparsity['remaining']:.2f}%). {plan.target_note}."]
    return "\n".join(lines)
