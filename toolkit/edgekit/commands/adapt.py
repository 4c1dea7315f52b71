"""`edgekit adapt` and `edgekit decompose`: run one low-rank stage on a model (then export and verify the plain,
merged model) into a run folder, without writing a recipe."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.commands._options import MODEL_HELP, Sets, TrustCode, stage_default


def _split(text: str | None) -> tuple[str, ...] | None:
    return tuple(p.strip() for p in text.split(",") if p.strip()) if text else None


def _run(stage: str, values: dict[str, Any], *, model: str | None, target: str, data: str | None,
         weights: str | None, input_shape: str | None, out: Path | None, export: bool, fresh: bool,
         set_: list[str] | None, trust_model_code: bool) -> None:
    from edgekit import api
    from edgekit.commands._shared import make_console, parse_sets, print_summary, progress_bar

    overrides = parse_sets(set_)
    settings = {k: v for k, v in values.items() if v is not None}
    settings.update(overrides.pop(stage, {}))
    stages: list[dict[str, Any]] = [{"baseline": {}}, {stage: settings}]
    if export:
        stages += [{"export": {}}, {"verify": {}}]
    out_dir = out or Path("runs") / f"{api.default_out_dir(model, target).name}-{stage}"
    console = make_console()
    with progress_bar() as progress:
        report = api.compress(model, target, recipe={"stages": stages}, data=data, weights=weights,
                              input_shape=api.parse_shape(input_shape), out=out_dir, overrides=overrides,
                              resume=not fresh, progress=progress, console=console, trust_code=trust_model_code)
    rec = next(s for s in report["stages"] if s["name"] == stage)
    console.print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec["metrics"].items()))
    print_summary(console, report, out_dir)


Model = Annotated[str | None, typer.Argument(help=MODEL_HELP)]
Target = Annotated[str, typer.Option(help="target whose formats are exported")]
Data = Annotated[str | None, typer.Option(help="digits, an image folder, or an .npz with x/y")]
Weights = Annotated[str | None, typer.Option(help="state-dict file (loaded with weights_only=True)")]
Shape = Annotated[str | None, typer.Option(help="N,C,H,W, e.g. 1,3,224,224")]
Out = Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-<target>-<stage>)")]
Export = Annotated[bool, typer.Option(help="export and verify the resulting model")]
Fresh = Annotated[bool, typer.Option(help="ignore finished stages of an earlier run in --out")]


# Options every single-stage command takes: (name, annotated type, default), before and after the stage's own.
_LEADING: tuple[tuple[str, Any, Any], ...] = (("model", Model, None), ("data", Data, None))
_TRAILING: tuple[tuple[str, Any, Any], ...] = (
    ("target", Target, "host"), ("weights", Weights, None), ("input_shape", Shape, None), ("out", Out, None),
    ("export", Export, True), ("fresh", Fresh, False), ("set_", Sets, None), ("trust_model_code", TrustCode, False))


def _stage_command(app: typer.Typer, stage: str, doc: str, options: dict[str, tuple[type, str]],
                   convert: dict[str, Callable[[Any], Any]] | None = None) -> None:
    """Adds `edgekit <stage>`: the shared model/data options, the stage's own, then the shared run options.

    Args:
        app: the typer app.
        stage: stage module name; also the command's name.
        doc: the command's help text.
        options: the stage's own options in --help order: name -> (type, help). Each is optional (default None)
            and becomes the stage setting of the same name; unset ones keep the stage's defaults.
        convert: name -> function applied to that option's value before it becomes a setting.
    """
    convert = convert or {}

    def command(**kwargs: Any) -> None:
        common = {name: kwargs.pop(name) for name, _, _ in (*_LEADING, *_TRAILING)}
        _run(stage, {k: convert[k](v) if k in convert else v for k, v in kwargs.items()}, **common)

    # typer reads a command's options from its signature; building it here keeps the shared options in one place.
    own = [(name, Annotated[tp | None, typer.Option(help=text, show_default=stage_default(stage, name))], None)
           for name, (tp, text) in options.items()]
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
         for name, ann, default in (*_LEADING, *own, *_TRAILING)])
    command.__doc__ = doc
    app.command(name=stage)(command)


def register(app: typer.Typer) -> None:
    _stage_command(app, "adapt", "Train adapters (LoRA / LoRA-C / CP-LoRA / DoRA) on a frozen model, merge them, "
                   "export the plain model.", {
                       "method": (str, "lora, lora-c, cp-lora or dora"),
                       "rank": (int, "adapter rank"),
                       "alpha": (float, "update scale alpha / rank (0: alpha = rank)"),
                       "layers": (str, "comma-separated: Conv2d, Linear, names or globs"),
                       "head": (str, "keep, train or new (classifier head)"),
                       "epochs": (int, "training epochs"),
                       "lr": (float, "learning rate"),
                       "max_train": (int, "labelled training examples to use (0: all)"),
                   }, convert={"layers": _split})
    _stage_command(app, "decompose", "Replace KxK convs by CP or Tucker-2 sequences, fine-tune, export the result.", {
        "method": (str, "cp or tucker"),
        "ratio": (float, "fraction of each layer's params (or latency) kept"),
        "budget": (str, "params or latency"),
        "rank": (int, "fixed rank (0: from the budget)"),
        "epochs": (int, "fine-tuning epochs"),
    })
