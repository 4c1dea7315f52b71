"""Options that mean the same on every sub-command that has them (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

TrustCode = Annotated[bool, typer.Option(
    "--trust-model-code", help="allow model sources that run Python code: a module:factory MODEL (imported and "
                               "run) and .pt2 files with pickled entries; only for files you trust")]
Sets = Annotated[list[str] | None, typer.Option(
    "--set", help="stage.field=value for any stage setting, e.g. measure.runs=100 (values are YAML scalars or "
                  "lists); repeatable")]
Device = Annotated[str | None, typer.Option(
    help="measure on a device: ssh://user@host[:port], adb://SERIAL, node, chromium, or a farm: farm:devices.toml "
         "(default: this machine for the host target)")]
Task = Annotated[str | None, typer.Option(
    help="the quality metric's task: classify, detect, text-detect, text-recognize, segment, keypoints, embed, "
         "fidelity; default auto (classify for a class-vector output, else fidelity)")]
Metric = Annotated[str | None, typer.Option(
    help="your own metric, package.module:function (outputs, labels) -> float, higher is better; imports and runs "
         "your code: needs --trust-model-code")]
Alphabet = Annotated[Path | None, typer.Option(
    help="text-recognize: the recogniser's characters, one per line (default: the model's own metadata)")]
CocoLabels = Annotated[Path | None, typer.Option(
    "--labels", help="detect: target boxes as a COCO JSON whose images are listed in the data's row order")]
BUDGET_HELP = ("quality budget from the model as loaded, in the metric's unit: points (accuracy, mAP, F1, "
               "agreement) or dB for fidelity")
MODEL_HELP = ("zoo name, .onnx/.tflite/.pt2 file or module:factory (imports and runs Python code: needs "
              "--trust-model-code); default: the built-in digits CNN")


def stage_default(stage: str, name: str) -> str:
    """The default of a stage setting as --help shows it (an option left unset keeps the stage's default)."""
    import dataclasses
    import importlib

    fields = {f.name: f for f in dataclasses.fields(importlib.import_module(f"edgekit.stages.{stage}").Settings)}
    default = fields[name].default
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default).lower() if isinstance(default, bool) else str(default)
