"""`edgekit adapt` and `edgekit decompose`: run one low-rank stage on a model (then export and verify the plain,
merged model) into a run folder, without writing a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _split(text: str | None) -> tuple[str, ...] | None:
    return tuple(p.strip() for p in text.split(",") if p.strip()) if text else None


def _run(stage: str, values: dict[str, Any], model: str | None, target: str, data: str | None,
         weights: str | None, input_shape: str | None, out: Path | None, export: bool, fresh: bool,
         set_: list[str] | None) -> None:
    from edgekit import api
    from edgekit.cli import _console, _print_summary, parse_sets, progress_bar

    overrides = parse_sets(set_)
    settings = {k: v for k, v in values.items() if v is not None}
    settings.update(overrides.pop(stage, {}))
    stages: list[dict[str, Any]] = [{"baseline": {}}, {stage: settings}]
    if export:
        stages += [{"export": {}}, {"verify": {}}]
    out_dir = out or Path("runs") / f"{api.default_out_dir(model, target).name}-{stage}"
    console = _console()
    with progress_bar() as progress:
        report = api.compress(model, target, recipe={"stages": stages}, data=data, weights=weights,
                              input_shape=api.parse_shape(input_shape), out=out_dir, overrides=overrides,
                              resume=not fresh, progress=progress, console=console)
    rec = next(s for s in report["stages"] if s["name"] == stage)
    console.print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec["metrics"].items()))
    _print_summary(console, report, out_dir)


Model = Annotated[str | None, typer.Argument(help="zoo name, .onnx/.pt2 file or module:factory; default: the "
                                                  "built-in digits CNN")]
Target = Annotated[str, typer.Option(help="target whose formats are exported")]
Data = Annotated[str | None, typer.Option(help="digits, an image folder, or an .npz with x/y")]
Weights = Annotated[str | None, typer.Option(help="state-dict file (loaded with weights_only=True)")]
Shape = Annotated[str | None, typer.Option(help="N,C,H,W, e.g. 1,3,224,224")]
Out = Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-<target>-<stage>)")]
Export = Annotated[bool, typer.Option(help="export and verify the resulting model")]
Fresh = Annotated[bool, typer.Option(help="ignore finished stages of an earlier run in --out")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="stage.field=value, repeatable")]


def register(app: typer.Typer) -> None:
    @app.command()
    def adapt(
        model: Model = None,
        data: Data = None,
        method: Annotated[str | None, typer.Option(help="lora, lora-c, cp-lora or dora")] = None,
        rank: Annotated[int | None, typer.Option(help="adapter rank")] = None,
        alpha: Annotated[float | None, typer.Option(help="update scale alpha / rank (0: alpha = rank)")] = None,
        layers: Annotated[str | None, typer.Option(help="comma-separated: Conv2d, Linear, names or globs")] = None,
        head: Annotated[str | None, typer.Option(help="keep, train or new (classifier head)")] = None,
        epochs: Annotated[int | None, typer.Option(help="training epochs")] = None,
        lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
        max_train: Annotated[int | None, typer.Option(help="labelled training examples to use (0: all)")] = None,
        target: Target = "host",
        weights: Weights = None,
        input_shape: Shape = None,
        out: Out = None,
        export: Export = True,
        fresh: Fresh = False,
        set_: Sets = None,
    ) -> None:
        """Train adapters (LoRA / LoRA-C / CP-LoRA / DoRA) on a frozen model, merge them, export the plain model."""
        _run("adapt", {"method": method, "rank": rank, "alpha": alpha, "layers": _split(layers), "head": head,
                       "epochs": epochs, "lr": lr, "max_train": max_train},
             model, target, data, weights, input_shape, out, export, fresh, set_)

    @app.command()
    def decompose(
        model: Model = None,
        data: Data = None,
        method: Annotated[str | None, typer.Option(help="cp or tucker")] = None,
        ratio: Annotated[float | None, typer.Option(help="fraction of each layer's params (or latency) kept")] = None,
        budget: Annotated[str | None, typer.Option(help="params or latency")] = None,
        rank: Annotated[int | None, typer.Option(help="fixed rank (0: from the budget)")] = None,
        epochs: Annotated[int | None, typer.Option(help="fine-tuning epochs")] = None,
        target: Target = "host",
        weights: Weights = None,
        input_shape: Shape = None,
        out: Out = None,
        export: Export = True,
        fresh: Fresh = False,
        set_: Sets = None,
    ) -> None:
        """Replace KxK convs by CP or Tucker-2 sequences, fine-tune, export the result."""
        _run("decompose", {"method": method, "ratio": ratio, "budget": budget, "rank": rank, "epochs": epochs},
             model, target, data, weights, input_shape, out, export, fresh, set_)
