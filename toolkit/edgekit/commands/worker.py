"""`edgekit worker SPEC`: one more process (here or on another machine) working on a search's shared study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(name="worker")(worker)


def worker(
    spec: Annotated[Path, typer.Argument(help="spec.json written by a search started with --workers / --storage "
                                              "(its folder holds the files the worker needs)")],
    index: Annotated[int, typer.Option(help="worker number (its sampler seed is the search's seed + index)")] = 1,
    storage: Annotated[str | None, typer.Option(help="the study's storage as this machine reaches it "
                                                     "(postgresql://USER@HOST[:PORT]/DB; default: the spec's)")]
        = None,
) -> None:
    """Join a distributed search: run its trials until the study has as many as it asked for."""
    from edgekit.errors import SettingsError
    from edgekit.study import run_worker

    if index < 1:
        raise SettingsError("--index must be at least 1 (0 is the process that started the search)")
    n = run_worker(spec, index, storage)
    print(f"worker {index}: {n} trial(s) finished")
