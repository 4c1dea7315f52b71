"""`edgekit farm status devices.toml`: the devices of a farm, their facts and health (docs/devices.md)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer

farm_app = typer.Typer(help="A farm of devices (devices.toml): check it, measure on it with --device farm:FILE.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(farm_app, name="farm")


@farm_app.command()
def status(
    file: Annotated[Path, typer.Argument(help="the farm file (devices.toml)")],
    target: Annotated[str | None, typer.Option(help="only the devices of this target")] = None,
    labels: Annotated[str, typer.Option(help="only devices with all these labels (comma-separated)")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
) -> None:
    """Reach every device of a farm: its facts (CPU, cores, architecture, runtimes), whether it is what its
    target says, how many of its slots are busy now. Exit code 1 when no device is up."""
    from edgekit.devices.farmfile import load_farm
    from edgekit.devices.lease import Leases

    spec = load_farm(file)
    members = spec.select(target, tuple(x for x in labels.split(",") if x))
    if not members:
        from edgekit.errors import SettingsError

        raise SettingsError(f"{spec.path}: no device matches (targets: {', '.join(spec.targets)})")
    leases = Leases(spec.lock_dir or None)
    with ThreadPoolExecutor(max_workers=min(16, len(members))) as pool:
        rows = list(pool.map(lambda m: probe(m, leases, spec.timeout_s), members))
    up = sum(r["health"] == "up" for r in rows)
    if as_json:
        print(json.dumps({"farm": str(spec.path), "devices": rows, "up": up, "total": len(rows)}))
    else:
        _table(spec, rows, up)
    if not up:
        raise typer.Exit(1)


def probe(m: Any, leases: Any, timeout_s: int) -> dict[str, Any]:
    """One device's row: reachable or not (with the one-line reason), its facts, whether it fits its target."""
    from edgekit.devices import open_device
    from edgekit.devices.facts import check_device_fits_target
    from edgekit.errors import first_line
    from edgekit.targets import load_target

    row: dict[str, Any] = {"name": m.name, "uri": m.display, "target": m.target, "labels": list(m.labels),
                           "concurrency": m.concurrency, "busy_slots": leases.busy(m.display, m.concurrency)}
    start = time.monotonic()
    tgt = load_target(m.target)
    try:
        with open_device(m.uri, target=tgt, timeout=min(timeout_s, 120)) as dev:
            facts = dev.facts()
            row["runtimes"] = facts.get("runtimes") or list(dev.runtimes())
    except Exception as e:  # noqa: BLE001 (every failure is this device's health, reported, not raised)
        row.update(health="down", error=first_line(e))
        row["probe_s"] = round(time.monotonic() - start, 2)
        return row
    row["probe_s"] = round(time.monotonic() - start, 2)
    row["facts"] = {k: facts.get(k) for k in ("hostname", "model", "cpu", "cores", "arch", "python", "emulated",
                                              "android_version", "engine") if facts.get(k) is not None}
    try:
        if "engine" not in facts:  # engines stand for the browser target by kind, not by CPU
            check_device_fits_target(facts, tgt, m.display)
        row.update(health="up", fits_target=True)
    except Exception as e:  # noqa: BLE001
        row.update(health="misfit", fits_target=False, error=str(e)[:300])
    return row


def _table(spec: Any, rows: list[dict[str, Any]], up: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"farm {spec.path} ({up}/{len(rows)} up)")
    for col in ("device", "target", "health", "facts", "runtimes", "slots busy", "probe s"):
        table.add_column(col, overflow="fold")
    for r in rows:
        f = r.get("facts") or {}
        what = (f"{f.get('hostname')}: {f.get('model') or f.get('cpu')} ({f.get('cores')} cores, {f.get('arch')})"
                if f else r.get("error", ""))
        health = r["health"] if r["health"] == "up" else f"{r['health']}: {r.get('error', '')}"
        table.add_row(f"{r['name']}\n{r['uri']}" + (f"\n[{', '.join(r['labels'])}]" if r["labels"] else ""),
                      r["target"], health, what, ", ".join(r.get("runtimes") or []),
                      f"{r['busy_slots']}/{r['concurrency']}", f"{r['probe_s']:.2f}")
    Console().print(table)
