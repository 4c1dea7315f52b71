"""The `edgekit` command: parses, calls the API, prints. Sub-commands beyond the core live in edgekit/commands/,
one module each with `register(app)`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Compress neural networks for edge devices and report measured gains.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def progress_bar():
    """A rich progress display for long work (stages, training, timing)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), transient=True,
                    console=_console(stderr=True))


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def parse_sets(values: list[str] | None) -> dict[str, dict[str, object]]:
    """--set stage.field=value (YAML scalars) -> {stage: {field: value}}."""
    import yaml

    from edgekit.errors import SettingsError

    out: dict[str, dict[str, object]] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        stage, dot, fld = key.partition(".")
        if not sep or not dot:
            raise SettingsError(f"--set expects stage.field=value, got '{item}'")
        out.setdefault(stage, {})[fld] = yaml.safe_load(raw)
    return out


@app.command()
def compress(
    model: Annotated[str | None, typer.Argument(help="zoo name, .onnx/.pt2 file or module:factory; "
                                                     "default: the built-in digits CNN")] = None,
    target: Annotated[str, typer.Option(help="target name (see `edgekit targets`)")] = "host",
    recipe: Annotated[str | None, typer.Option(help="auto (plan from the target and data; the default), basic "
                                                    "(export and measure only), another recipe name or a YAML file")
                      ] = None,
    max_quality_drop: Annotated[float | None, typer.Option(
        help="quality budget in points from the model as loaded (accuracy, or agreement without labels); "
             "default 1.0 for --recipe auto")] = None,
    data: Annotated[str | None, typer.Option(help="digits, an image folder, or an .npz with x/y")] = None,
    weights: Annotated[str | None, typer.Option(help="state-dict file (loaded with weights_only=True)")] = None,
    input_shape: Annotated[str | None, typer.Option(help="N,C,H,W, e.g. 1,3,224,224")] = None,
    threads: Annotated[int | None, typer.Option(help="runtime threads (default: the target's)")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<model>-<target>)")] = None,
    device: Annotated[str | None, typer.Option(help="measure on a device: ssh://user@host[:port], adb://SERIAL, "
                                                    "node, chromium")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="stage.field=value, repeatable")] = None,
    fresh: Annotated[bool, typer.Option(help="ignore finished stages of an earlier run in --out")] = False,
) -> None:
    """Run a recipe on a model for a target and write report.json, report.md and artifacts/."""
    from edgekit import api

    console = _console()
    shape = api.parse_shape(input_shape)
    out_dir = out or api.default_out_dir(model, target)
    with progress_bar() as progress:
        report = api.compress(model, target, recipe=recipe, data=data, weights=weights, input_shape=shape,
                              threads=threads, out=out_dir, device=device, overrides=parse_sets(set_),
                              max_quality_drop=max_quality_drop, resume=not fresh, progress=progress,
                              console=console)
    _print_summary(console, report, out_dir)


def _print_summary(console, report: dict, out_dir: Path) -> None:
    """The artifacts (the loaded model's float ones first, as baseline) with quality, then the before/after line."""
    from rich.table import Table

    s = report["summary"]
    metric = s.get("quality_metric") or "quality"
    table = Table(title=f"{report['model']} → {report['target']}")
    table.add_column("artifact", overflow="fold")
    for col in ("size", metric, "verified", "p50 ms", "latency source"):
        table.add_column(col)
    base = [a for a in (report.get("baseline") or {}).get("artifacts", [])]
    for a in base + report["artifacts"]:
        v = a.get("verification") or {}
        lat = a.get("latency") or {}
        q = (v.get("quality") or {}).get("value")
        name = a["path"] + (" (baseline)" if a in base else "") + (" ★" if a["path"] == s.get("artifact") else "")
        table.add_row(name, f"{a['size_bytes'] / 1e3:.1f} kB", f"{q:.4f}" if q is not None else "–",
                      ("yes" if v.get("passed") else "NO") + (f" ({v['max_abs_err']:.2g})" if v else ""),
                      f"{lat['p50_ms']:.3f}" if lat.get("p50_ms") is not None else "–", lat.get("source", "none"))
    console.print(table)
    if s.get("quality_before") is not None and s.get("quality_after") is not None:
        speed = f", p50 {s['p50_ms_before']:.3g} → {s['p50_ms_after']:.3g} ms ({s['speedup']:.2f}x)" if s.get(
            "speedup") else ""
        console.print(f"{metric} {s['quality_before']:.4f} (as loaded) → {s['quality_after']:.4f} "
                      f"({s['quality_drop']:+.2f} pts drop){speed}; ★ {s.get('artifact') or '–'}")
    console.print(f"report: {out_dir / 'report.json'}  (Markdown: {out_dir / 'report.md'})")


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
    _console().print(table)


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


def _register_commands() -> None:
    import edgekit.commands as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"edgekit.commands.{m.name}").register(app)


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 2."""
    import click

    from edgekit.errors import EdgekitError

    _register_commands()
    try:
        # Outside standalone mode click returns the code of a typer.Exit (e.g. a failed --fail-on gate) instead of
        # exiting with it.
        code = app(standalone_mode=False)
        if type(code) is int and code:
            sys.exit(code)
    except EdgekitError as e:
        print(f"edgekit: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Abort:
        print("edgekit: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("edgekit: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
