"""What every command that runs stages shares: progress on stderr, the console, `--set` parsing and the summary table
printed at the end of a run."""

from __future__ import annotations

from pathlib import Path


def progress_bar():
    """Progress for long work (stages, training, timing): rich bars on a terminal, plain lines on stderr otherwise."""
    from edgekit.progress import make_progress

    return make_progress()


def make_console(stderr: bool = False):
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


def print_summary(console, report: dict, out_dir: Path) -> None:
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
    for s in report.get("skipped") or []:  # one line per format a stage could not make: the run went on
        console.print(f"skipped {s['format']} ({s['stage']}): {s['why']}", soft_wrap=True)
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
