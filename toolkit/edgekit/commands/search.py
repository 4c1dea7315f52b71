"""`edgekit search`: the joint pruning + quantisation search (recipe `joint`) with its main settings as flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.commands._options import (
    BUDGET_HELP,
    MODEL_HELP,
    Alphabet,
    CocoLabels,
    Metric,
    Sets,
    Task,
    TrustCode,
)


def register(app: typer.Typer) -> None:
    @app.command()
    def search(
        model: Annotated[str | None, typer.Argument(help=MODEL_HELP)] = None,
        target: Annotated[str, typer.Option(help="target name")] = "host",
        data: Annotated[str | None, typer.Option(help="fine-tuning / evaluation data: digits, an image folder, or "
                                                      "an .npz with x (and y for accuracy)")] = None,
        weights: Annotated[str | None, typer.Option(help="state-dict file (weights_only=True)")] = None,
        input_shape: Annotated[str | None, typer.Option(help="N,C,H,W")] = None,
        max_quality_drop: Annotated[float, typer.Option(help=f"constraint: {BUDGET_HELP}")] = 1.0,
        latency_budget_ms: Annotated[float, typer.Option(help="constraint: p50 ms (0: none)")] = 0.0,
        max_size_mb: Annotated[float, typer.Option(help="constraint: artifact size in MB (0: none)")] = 0.0,
        trials: Annotated[int, typer.Option(help="Optuna (NSGA-II) trials")] = 48,
        max_seconds: Annotated[float, typer.Option(help="time limit of the search")] = 1080.0,
        dimensions: Annotated[str, typer.Option(help="comma-separated: width, precision, sparsity "
                                                     "(default: all the target allows)")] = "",
        runtimes: Annotated[str, typer.Option(help="comma-separated runtimes (default: the target's)")] = "",
        out: Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-<target>-joint)")] = None,
        set_: Sets = None,
        fresh: Annotated[bool, typer.Option(help="ignore finished stages of an earlier run in --out")] = False,
        task: Task = None,
        metric: Metric = None,
        alphabet: Alphabet = None,
        labels: CocoLabels = None,
        trust_model_code: TrustCode = False,
    ) -> None:
        """Search per-layer width, precision and sparsity together on latency measured in each runtime."""
        from edgekit import api
        from edgekit.commands._shared import make_console, parse_sets, print_summary, progress_bar

        joint: dict[str, object] = {"max_quality_drop": max_quality_drop, "latency_budget_ms": latency_budget_ms,
                                    "max_size_mb": max_size_mb, "trials": trials, "max_seconds": max_seconds}
        for name, text in (("dimensions", dimensions), ("runtimes", runtimes)):
            if text:
                joint[name] = [v.strip() for v in text.split(",") if v.strip()]
        overrides = parse_sets(set_)
        overrides["joint"] = {**joint, **overrides.get("joint", {})}
        out_dir = out or Path(f"{api.default_out_dir(model, target)}-joint")
        console = make_console()
        with progress_bar() as progress:
            report = api.compress(model, target, recipe="joint", data=data, weights=weights,
                                  input_shape=api.parse_shape(input_shape), out=out_dir, overrides=overrides,
                                  resume=not fresh, progress=progress, console=console,
                                  trust_code=trust_model_code, task=task, metric=metric,
                                  metric_options=api.metric_options(alphabet, labels))
        print_summary(console, report, out_dir)
        stage = next(s for s in report["stages"] if s["name"] == "joint")
        m = stage["metrics"]
        speed = m.get("speedup")
        unit = (report.get("quality") or {}).get("unit", "pts")
        console.print(f"joint search: drop {m['quality_drop']:.2f} {unit}"
                      + (f", {speed:.2f}x the unmodified model's best FP32 artifact" if speed else "")
                      + f"; constraints met: {'yes' if m['constraints_met'] else 'no'}")
