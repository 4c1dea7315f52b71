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

from edgekit.commands._options import MODEL_HELP, Device, Sets, TrustCode

app = typer.Typer(help="Compress neural networks for edge devices and report measured gains.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        from edgekit import __version__

        print(f"edgekit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                                                callback=_version)] = False) -> None:
    """Compress neural networks for edge devices and report measured gains."""


def progress_bar():
    """Progress for long work (stages, training, timing): rich bars on a terminal, plain lines on stderr otherwise."""
    from edgekit.progress import make_progress

    return make_progress()


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
        if not sep or not dot or not stage or not fld:
            raise SettingsError(f"--set expects stage.field=value (e.g. measure.runs=100), got '{item}'")
        try:
            if any(isinstance(t, yaml.TagToken) for t in yaml.scan(raw)):
                # YAML tags (!!python/..., !!binary, !custom) build objects, not settings values.
                raise SettingsError(f"--set {key}: YAML tags are not accepted, got '{raw}'")
            out.setdefault(stage, {})[fld] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise SettingsError(f"--set {key}: '{raw}' is not a YAML value ({' '.join(str(e).split())[:120]})") from None
    return out


@app.command()
def compress(
    model: Annotated[str | None, typer.Argument(help=MODEL_HELP)] = None,
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
    device: Device = None,
    set_: Sets = None,
    fresh: Annotated[bool, typer.Option(help="ignore finished stages of an earlier run in --out")] = False,
    trust_model_code: TrustCode = False,
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
                              console=console, trust_code=trust_model_code)
    _print_summary(console, report, out_dir)


def _print_summary(console, report: dict, out_dir: Path) -> None:
    """The artifacts (the loaded model's float ones first, as baseline) with quality, as a table that fits the
    console (80 columns in a pipe): words are never split; names too long for a table row get a line of their own.
    Then the before/after line."""
    from rich import box
    from rich.table import Table

    s = report.get("summary") or {}
    metric = s.get("quality_metric") or "quality"
    base = list((report.get("baseline") or {}).get("artifacts", []))
    rows = []
    for a in base + list(report["artifacts"]):
        v = a.get("verification") or {}
        lat = a.get("latency") or {}
        err = v.get("max_abs_err")
        q = (v.get("quality") or {}).get("value")
        name = (a["path"].removeprefix("artifacts/") + (" (baseline)" if a in base else "")
                + (" *" if a["path"] == s.get("artifact") else ""))
        rows.append((name, _size(a.get("size_bytes")), f"{q:.4f}" if q is not None else "–",
                     ("yes" if v.get("passed") else "NO") + (f" {err:.0e}" if isinstance(err, float) else ""),
                     f"{lat['p50_ms']:.4g}" if lat.get("p50_ms") is not None else "–", lat.get("source", "none")))
    headers = ("artifact", "size", metric, "verified", "p50 ms", "latency")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    title = f"{report['model']} → {report['target']}"
    if sum(widths) + 2 * len(widths) <= console.width:
        table = Table(*headers, title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for col in table.columns:
            col.no_wrap = True
        for r in rows:
            table.add_row(*r)
        console.print(table)
    else:
        console.print(title)
        for name, size, q, verified, p50, source in rows:
            console.print(f"  {name}", soft_wrap=True)
            console.print(f"      {size}, {metric} {q}, verified {verified}, p50 {p50} ms ({source})")
    if s.get("quality_before") is not None and s.get("quality_after") is not None:
        speed = f", p50 {s['p50_ms_before']:.3g} → {s['p50_ms_after']:.3g} ms ({s['speedup']:.2f}x)" if s.get(
            "speedup") else ""
        console.print(f"{metric} {s['quality_before']:.4f} (as loaded) → {s['quality_after']:.4f} "
                      f"({s['quality_drop']:+.2f} pts drop){speed}; * {s.get('artifact') or '–'}", soft_wrap=True)
    # Paths are never wrapped (a wrapped path cannot be copied); the terminal folds what is too long.
    console.print(f"artifacts: {out_dir / 'artifacts'}", soft_wrap=True)
    console.print(f"report: {out_dir / 'report.json'}  (Markdown: {out_dir / 'report.md'})", soft_wrap=True)


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


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
