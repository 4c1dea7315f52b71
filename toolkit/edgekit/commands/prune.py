"""`edgekit prune MODEL --data digits ...`: the lottery-ticket prune stage alone (baseline, then prune), written to a
run folder like `compress` (report.json, report.md, prune/ with the round checkpoints, mask and plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.commands._options import MODEL_HELP, Sets, TrustCode
from edgekit.commands._options import stage_default as _d


def register(app: typer.Typer) -> None:
    app.command(name="prune")(prune)


def prune(
    model: Annotated[str | None, typer.Argument(help=f"e.g. edgekit:digits_mlp; {MODEL_HELP}")] = None,
    data: Annotated[str | None, typer.Option(help="labelled data: digits, an image folder, or an .npz with x/y")] = None,
    target: Annotated[str | None, typer.Option(help="shape the masks for this target's runtime (its sparse "
                                                    "rules); default: no target rules")] = None,
    rounds: Annotated[int | None, typer.Option(help="pruning rounds after the dense round 0",
                                               show_default=_d("prune", "rounds"))] = None,
    rate: Annotated[float | None, typer.Option(help="fraction of surviving weights removed per round",
                                               show_default=_d("prune", "rate"))] = None,
    rewind_step: Annotated[int | None, typer.Option(help="training step the survivors are reset to",
                                                    show_default=_d("prune", "rewind_step"))] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs per round",
                                               show_default=_d("prune", "epochs"))] = None,
    pattern: Annotated[str | None, typer.Option(help="unstructured, 1x4, 4x1 or N:M",
                                                show_default=_d("prune", "pattern"))] = None,
    structure: Annotated[str | None, typer.Option(help="weights (sparse masks) or channel (whole channel groups: "
                                                       "a thinner dense network)",
                                                  show_default=_d("prune", "structure"))] = None,
    ranking: Annotated[str | None, typer.Option(help="layer or global", show_default=_d("prune", "ranking"))] = None,
    seed: Annotated[int | None, typer.Option(help="seed of every random choice",
                                             show_default=_d("prune", "seed"))] = None,
    torch_device: Annotated[str | None, typer.Option(help="where torch trains: cpu, cuda or auto (setting "
                                                          "prune.device)", show_default=_d("prune", "device"))] = None,
    controls: Annotated[bool, typer.Option(help="train the re-init and random-mask controls each round")] = True,
    weights: Annotated[str | None, typer.Option(help="state-dict file (loaded with weights_only=True)")] = None,
    input_shape: Annotated[str | None, typer.Option(help="N,C,H,W, e.g. 1,3,224,224")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-prune)")] = None,
    set_: Sets = None,
    fresh: Annotated[bool, typer.Option(help="ignore finished stages and rounds of an earlier run in --out")] = False,
    trust_model_code: TrustCode = False,
) -> None:
    """Find a winning ticket: iterative magnitude pruning with rewinding, with re-init and random-mask controls
    (--structure channel: over channel groups, giving a thinner dense network)."""
    from edgekit import api
    from edgekit.commands._shared import make_console, parse_sets, progress_bar

    settings: dict[str, Any] = {k: v for k, v in {
        "rounds": rounds, "rate": rate, "rewind_step": rewind_step, "epochs": epochs, "pattern": pattern,
        "structure": structure, "ranking": ranking, "seed": seed, "device": torch_device}.items() if v is not None}
    if not controls:
        settings.update(reinit_control=False, random_mask_control=False)
    if target is None:
        settings["target_rules"] = "off"
    overrides = parse_sets(set_)
    settings.update(overrides.pop("prune", {}))
    recipe = {"stages": [{"baseline": {}}, {"prune": settings}]}
    shape = api.parse_shape(input_shape)
    tgt = target or "host"
    out_dir = out or Path(str(api.default_out_dir(model, tgt)).removesuffix(f"-{tgt}") + "-prune")
    console = make_console()
    with progress_bar() as progress:
        # --fresh reaches the prune stage through the pipeline, after the inputs were checked: a bad model never
        # costs the rounds of an earlier run.
        report = api.compress(model, tgt, recipe=recipe, data=data, weights=weights, input_shape=shape, out=out_dir,
                              overrides=overrides, resume=not fresh, progress=progress, console=console,
                              trust_code=trust_model_code)
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
