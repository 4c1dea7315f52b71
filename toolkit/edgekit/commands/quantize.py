"""`edgekit quantize`: the quant recipe with its constraints as flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.commands._options import (
    BUDGET_HELP,
    MODEL_HELP,
    Alphabet,
    CocoLabels,
    Device,
    Metric,
    Sets,
    Task,
    TrustCode,
)


def register(app: typer.Typer) -> None:
    @app.command()
    def quantize(
        model: Annotated[str | None, typer.Argument(help=MODEL_HELP)] = None,
        target: Annotated[str, typer.Option(help="target name")] = "host",
        data: Annotated[str | None, typer.Option(help="calibration / evaluation data: digits, an image folder, "
                                                      "or an .npz with x (and y for accuracy)")] = None,
        weights: Annotated[str | None, typer.Option(help="state-dict file (weights_only=True)")] = None,
        input_shape: Annotated[str | None, typer.Option(help="N,C,H,W")] = None,
        max_quality_drop: Annotated[float, typer.Option(help=f"constraint: {BUDGET_HELP}")] = 1.0,
        latency_budget_ms: Annotated[float, typer.Option(help="constraint: p50 ms (0: none)")] = 0.0,
        max_size_mb: Annotated[float, typer.Option(help="constraint: artifact size in MB (0: none)")] = 0.0,
        trials: Annotated[int, typer.Option(help="NSGA-II trials of the ONNX search (and of the LiteRT "
                                                  "Quantizer's, for a .tflite model)")] = 30,
        formats: Annotated[str, typer.Option(help="comma-separated formats (default: the target's)")] = "",
        out: Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-<target>-quant)")] = None,
        device: Device = None,
        workers: Annotated[int, typer.Option(help="processes sharing the ONNX search (docs/quantization.md)")] = 1,
        storage: Annotated[str, typer.Option(help="the search's Optuna storage: sqlite:///PATH, "
                                                  "postgresql://USER@HOST[:PORT]/DB or memory (default: "
                                                  "state/quant_study.db in the run folder)")] = "",
        set_: Sets = None,
        fresh: Annotated[bool, typer.Option(help="ignore finished stages of an earlier run in --out")] = False,
        task: Task = None,
        metric: Metric = None,
        alphabet: Alphabet = None,
        labels: CocoLabels = None,
        trust_model_code: TrustCode = False,
    ) -> None:
        """Search per-layer INT8 policies scored on latency in each artifact's runtime (recipe `quant`)."""
        from edgekit import api
        from edgekit.commands._shared import make_console, parse_sets, print_summary, progress_bar

        overrides = parse_sets(set_)
        overrides["quantize"] = {"max_quality_drop": max_quality_drop, "latency_budget_ms": latency_budget_ms,
                                 "max_size_mb": max_size_mb, "trials": trials, "workers": workers,
                                 "storage": storage, **overrides.get("quantize", {})}
        if formats:
            overrides["quantize"]["formats"] = [f.strip() for f in formats.split(",") if f.strip()]
        out_dir = out or Path(f"{api.default_out_dir(model, target)}-quant")
        console = make_console()
        with progress_bar() as progress:
            report = api.compress(model, target, recipe="quant", data=data, weights=weights,
                                  input_shape=api.parse_shape(input_shape), out=out_dir, overrides=overrides,
                                  device=device, resume=not fresh, progress=progress, console=console,
                                  trust_code=trust_model_code, task=task, metric=metric,
                                  metric_options=api.metric_options(alphabet, labels))
        print_summary(console, report, out_dir)
