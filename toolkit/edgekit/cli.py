"""The `edgekit` command: parses, calls the API, prints. Sub-commands beyond the core live in edgekit/commands/,
one module each with `register(app)`."""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
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
from edgekit.commands._shared import make_console, parse_sets, print_summary, progress_bar

app = typer.Typer(help="Compress neural networks for edge devices and report measured gains.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        from edgekit.version import __version__

        print(f"edgekit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                                                callback=_version)] = False) -> None:
    """Compress neural networks for edge devices and report measured gains."""


@app.command()
def compress(
    model: Annotated[str | None, typer.Argument(help=MODEL_HELP)] = None,
    target: Annotated[str, typer.Option(help="target name (see `edgekit targets`)")] = "host",
    recipe: Annotated[str | None, typer.Option(help="auto (plan from the target and data; the default), basic "
                                                    "(export and measure only), another recipe name or a YAML file")
                      ] = None,
    max_quality_drop: Annotated[float | None, typer.Option(
        help=f"{BUDGET_HELP}; default 1 point, or 35 dB (SQNR >= 25 dB), for --recipe auto")] = None,
    data: Annotated[str | None, typer.Option(help="digits, an image folder, or an .npz with x/y")] = None,
    weights: Annotated[str | None, typer.Option(help="state-dict file (loaded with weights_only=True)")] = None,
    input_shape: Annotated[str | None, typer.Option(help="N,C,H,W, e.g. 1,3,224,224")] = None,
    dynamic: Annotated[str | None, typer.Option(
        help="axes of a torch model's input its artifacts keep dynamic, e.g. 0,3 (batch and width); a model "
             "file's own signature says which of its dimensions are")] = None,
    task: Task = None,
    metric: Metric = None,
    alphabet: Alphabet = None,
    labels: CocoLabels = None,
    threads: Annotated[int | None, typer.Option(help="runtime threads (default: the target's)")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-<target>)")] = None,
    device: Device = None,
    set_: Sets = None,
    fresh: Annotated[bool, typer.Option(help="ignore finished stages of an earlier run in --out")] = False,
    trust_model_code: TrustCode = False,
) -> None:
    """Run a recipe on a model for a target and write report.json, report.md and artifacts/."""
    from edgekit import api

    console = make_console()
    shape = api.parse_shape(input_shape)
    out_dir = out or api.default_out_dir(model, target)
    with progress_bar() as progress:
        report = api.compress(model, target, recipe=recipe, data=data, weights=weights, input_shape=shape,
                              threads=threads, out=out_dir, device=device, overrides=parse_sets(set_),
                              max_quality_drop=max_quality_drop, resume=not fresh, progress=progress,
                              console=console, trust_code=trust_model_code, dynamic=api.parse_axes(dynamic),
                              task=task, metric=metric, metric_options=api.metric_options(alphabet, labels))
    print_summary(console, report, out_dir)


@app.command()
def targets() -> None:
    """List the targets with their key facts."""
    from rich.table import Table

    from edgekit.targets import list_targets, load_target

    table = Table(title="targets")
    table.add_column("name", no_wrap=True)
    for col in ("device", "arch / cpu", "cores / threads", "SIMD", "runtimes"):
        table.add_column(col, overflow="fold")
    for name in list_targets():
        t = load_target(name)
        table.add_row(t.name, t.description, f"{t.arch} / {t.cpu}", f"{t.cores} / {t.threads}", ", ".join(t.simd),
                      ", ".join(f"{r.name} ({r.format})" for r in t.runtimes))
    make_console().print(table)


@app.command()
def zoo(filter: Annotated[str, typer.Option(help="show names containing this text")] = "") -> None:
    """List model names (no weights are downloaded; pass --weights to compress)."""
    from edgekit.zoo import list_zoo

    for name in list_zoo(filter):
        print(name)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `edgekit compress --out`")],
    format: Annotated[str, typer.Option(help="md (write report.md) or json (print report.json)")] = "md",
    fail_on: Annotated[list[str] | None, typer.Option(help="gate such as 'quality_drop>1.0'; repeatable; "
                                                            "exit 1 when one fails")] = None,
) -> None:
    """Render report.md again from report.json (and check CI gates)."""
    import json

    from edgekit.errors import SettingsError
    from edgekit.report import load_report, write_markdown

    data = load_report(run_dir)
    if format == "md":
        path = write_markdown(run_dir, data)
        print(path)
    elif format == "json":
        print(json.dumps(data, indent=2))
    else:
        raise SettingsError(f"--format must be md or json, got '{format}'")
    if fail_on:
        from edgekit.gates import check_gates

        failures = check_gates(data, fail_on)
        for f in failures:
            print(f"gate failed: {f}", file=sys.stderr)
        if failures:
            raise typer.Exit(1)


_registered = False


def _register_commands() -> None:
    global _registered
    if _registered:
        return
    import edgekit.commands as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"edgekit.commands.{m.name}").register(app)
    _registered = True


def install_signal_handlers() -> None:
    """SIGTERM (a CI job cancelled, `kill`) unwinds like an exit, so cleanup in `finally` blocks runs: child
    processes such as headless Chromium are stopped and temporary files removed."""
    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, terminate)


def _usage_line(e: Exception) -> str:
    """A typer/click usage error as one line: what is wrong and where the help is."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "edgekit"
    text = " ".join(str(e.format_message() if hasattr(e, "format_message") else e).split()).rstrip(".")
    hint = f"; see `{where} --help`" if ctx is not None else ""
    return f"{where.replace('python -m ', '')}: error: {text}{hint}"


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    from edgekit.errors import EdgekitError

    install_signal_handlers()
    _register_commands()
    try:
        # Outside standalone mode typer returns the code of a typer.Exit (e.g. a failed --fail-on gate) instead of
        # exiting with it, and raises usage errors for us to print.
        code = app(standalone_mode=False, prog_name="edgekit")
        if type(code) is int and code:
            sys.exit(code)
    except EdgekitError as e:
        print(f"edgekit: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("edgekit: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:
        # typer >= 0.29 bundles click (typer._click); its usage errors derive from TyperException.
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `edgekit`: the help is what was asked for
            print(e.format_message())
            sys.exit(0)
        print(_usage_line(e), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("edgekit: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
