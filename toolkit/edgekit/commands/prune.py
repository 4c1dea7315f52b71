"""`edgekit prune MODEL --data digits ...`: the lottery-ticket prune stage alone (baseline, then prune), written to a
run folder like `compress` (report.json, report.md, prune/ with the round checkpoints, mask and plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    app.command(name="prune")(prune)


def prune(
    model: Annotated[str | None, typer.Argument(help="zoo name (e.g. edgekit:digits_mlp), .onnx/.pt2 file or "
                                                     "module:factory; default: the built-in digits CNN")] = None,
    data: Annotated[str | None, typer.Option(help="labelled data: digits, an image folder, or an .npz with x/y")] = None,
    target: Annotated[str | None, typer.Option(help="shape the masks for this target's runtime (its sparse "
                                                    "rules); default: no target rules")] = None,
    rounds: Annotated[int | None, typer.Option(help="pruning rounds after the dense round 0")] = None,
    rate: Annotated[float | None, typer.Option(help="fraction of surviving weights removed per round")] = None,
    rewind_step: Annotated[int | None, typer.Option(help="training step the survivors are reset to")] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs per round")] = None,
    pattern: Annotated[str | None, typer.Option(help="unstructured, 1x4, 4x1 or N:M")] = None,
    structure: Annotated[str | None, typer.Option(help="weights (sparse masks) or channel (whole channel groups: "
                                                       "a thinner dense network)")] = None,
    ranking: Annotated[str | None, typer.Option(help="layer or global")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of every random choice")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto")] = None,
    controls: Annotated[bool, typer.Option(help="train the re-init and random-mask controls each round")] = True,
    weights: Annotated[str | None, typer.Option(help="state-dict file (loaded with weights_only=True)")] = None,
    input_shape: Annotated[str | None, typer.Option(help="N,C,H,W, e.g. 1,3,224,224")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-prune)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="field=value for any other prune setting "
                                                                 "(e.g. lr=0.001, layers=linear), repeatable")] = None,
    fresh: Annotated[bool, typer.Option(help="ignore finished rounds of an earlier run in --out")] = False,
) -> None:
    """Find a winning ticket: iterative magnitude pruning with rewinding, with re-init and random-mask controls
    (--structure channel: over channel groups, giving a thinner dense network)."""
    from edgekit import api
    from edgekit.cli import _console, parse_sets, progress_bar

    settings: dict[str, Any] = {k: v for k, v in {
        "rounds": rounds, "rate": rate, "rewind_step": rewind_step, "epochs": epochs, "pattern": pattern,
        "structure": structure, "ranking": ranking, "seed": seed, "device": device}.items() if v is not None}
    if not controls:
        settings.update(reinit_control=False, random_mask_control=False)
    if target is None:
        settings["target_rules"] = "off"
    extra = parse_sets([f"prune.{s}" if not s.startswith("prune.") else s for s in set_ or []])
    settings.update(extra.get("prune", {}))
    recipe = {"stages": [{"baseline": {}}, {"prune": settings}]}
    shape = api.parse_shape(input_shape)
    tgt = target or "host"
    out_dir = out or Path(str(api.default_out_dir(model, tgt)).removesuffix(f"-{tgt}") + "-prune")
    console = _console()
    if fresh:
        import shutil

        # Only the stage's own round checkpoints are dropped; the pipeline's fresh flag handles the rest.
        shutil.rmtree(out_dir / "prune", ignore_errors=True)
    with progress_bar() as progress:
        report = api.compress(model, tgt, recipe=recipe, data=data, weights=weights, input_shape=shape, out=out_dir,
                              resume=not fresh, progress=progress, console=console)
    _print_rounds(console, report, out_dir)


def _print_rounds(console: Any, report: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    stage = next(s for s in report["stages"] if s["name"] == "prune")
    channels = stage["details"].get("structure") == "channel"
    table = Table(title=f"{'structured ' if channels else ''}lottery ticket: {report['model']}")
    for col in ("round", "weights remaining", *(("channels",) if channels else ()), "ticket", "re-init",
                "random channels" if channels else "random mask"):
        table.add_column(col, justify="right")
    for r in stage["details"]["rounds"]:
        ch = (f"{100 * r['channels_remaining']:.1f}%",) if channels else ()
        table.add_row(str(r["round"]), f"{100 * r['remaining']:.2f}%", *ch,
                      *[("–" if r[k] is None else f"{100 * r[k]:.2f}%") for k in ("ticket", "reinit", "random_masks")])
    console.print(table)
    kept = f"channels: {out_dir / stage['details']['channels']}" if channels else \
        f"mask: {out_dir / stage['details']['mask']}"
    console.print(f"report: {out_dir / 'report.json'}  (Markdown: {out_dir / 'report.md'}); {kept}")
