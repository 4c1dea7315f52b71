"""`edgekit profile`: measure artifacts on a device into a latency profile, or validate the latency predictor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(name="profile")(profile)


def profile(
    artifacts: Annotated[list[Path] | None, typer.Argument(help=".tflite / .onnx / .pte files to measure")] = None,
    target: Annotated[str, typer.Option(help="target the device is (see `edgekit targets`)")] = "host",
    device: Annotated[str, typer.Option(help="local, ssh://user@host:port, adb://SERIAL[?tool=apk] or "
                                             "farm:devices.toml")] = "local",
    from_log: Annotated[Path | None, typer.Option("--from-log", help="import a captured benchmark_model output "
                                                                    "(Android; see `edgekit android-harness`)")] = None,
    threads: Annotated[int | None, typer.Option(help="runtime threads (default: the target's)")] = None,
    runs: Annotated[int | None, typer.Option(help="timed runs per artifact (default 50; --validate: 100)")] = None,
    warmup: Annotated[int, typer.Option(help="untimed runs first")] = 5,
    profile_runs: Annotated[int, typer.Option(help="extra profiled runs for per-operator times (0: off)")] = 10,
    accept_new_host_key: Annotated[bool, typer.Option(help="ssh: add an unknown host key on first contact "
                                                           "(a changed key is still refused)")] = False,
    identity: Annotated[str | None, typer.Option(help="ssh: private key file")] = None,
    known_hosts: Annotated[str | None, typer.Option(help="ssh: known_hosts file")] = None,
    remote_python: Annotated[str | None, typer.Option(help="ssh: the device's python with the runtime")] = None,
    label: Annotated[str, typer.Option(help="what the artifacts are, kept with each entry (e.g. "
                                            "'torchvision mobilenet_v2, float, seed-0 weights')")] = "",
    save: Annotated[bool, typer.Option(help="write the profile (<target>/<device-id>.json under --out)")] = True,
    out: Annotated[Path | None, typer.Option(help="profiles folder to write into (default: the profiles/ the "
                                                  "latency predictor reads; --validate: runs/profile-validate)")]
        = None,
    validate: Annotated[bool, typer.Option(help="predict, then measure random INT8 policies of mobilenet_v2 "
                                                "on this machine, and report the predictor's error")] = False,
    variants: Annotated[int, typer.Option(help="--validate: fresh random policies to predict and measure")] = 20,
    train: Annotated[int, typer.Option(help="--validate: random policies profiled for the predictor")] = 8,
    model: Annotated[Path | None, typer.Option(help="--validate: float ONNX model (default: torchvision "
                                                    "mobilenet_v2, seed-0 weights)")] = None,
    sequential: Annotated[bool, typer.Option(help="--validate: profile, predict, then time the held-out policies "
                                                  "in a later session (default: one interleaved session)")] = False,
) -> None:
    """Measure artifacts on a device (latency profile with provenance), or validate the latency predictor."""
    from edgekit.errors import SettingsError

    if validate:
        _validate(target, device, threads or 1, runs or 100, warmup, profile_runs, variants, train, model, sequential,
                  validate_out_dir(out))
        return
    if from_log is not None or device.startswith("adb:"):
        from edgekit.commands.android import profile_android  # Android: benchmark_model over adb, or its log

        profile_android(artifacts, target, device, from_log, threads, runs, warmup, save, out)
        return
    if not artifacts:
        raise SettingsError("edgekit profile needs one or more artifact files (or --validate)")
    _measure(artifacts, target, device, threads, runs or 50, warmup, profile_runs, label, save, out,
             {"identity": identity, "known_hosts": known_hosts, "python": remote_python,
              "accept_new": True if accept_new_host_key else None})


def _measure(artifacts: list[Path], target: str, device: str, threads: int | None, runs: int, warmup: int,
             profile_runs: int, label: str, save: bool, out: Path | None, overrides: dict) -> None:
    """Times the files on the device (one measurement: side by side) and writes one profile entry per file, into
    `out` (default: the profiles/ the predictor reads)."""
    from edgekit.devices import Job, open_device
    from edgekit.devices.facts import SUFFIX_RUNTIMES
    from edgekit.errors import InputError, RuntimeUnavailable, SettingsError
    from edgekit.fileio import sha256_file
    from edgekit.latency.profile import add_entry, device_id_from_facts, new_profile, save_profile
    from edgekit.targets import load_target

    for a in artifacts:
        if not a.is_file():
            raise InputError(f"no such artifact: {a}")
        if a.suffix not in SUFFIX_RUNTIMES:
            raise SettingsError(f"{a}: the harness runs {', '.join(sorted(SUFFIX_RUNTIMES))} files")
    if runs < 5 or warmup < 0:
        raise SettingsError(f"--runs must be at least 5 and --warmup at least 0, got {runs} and {warmup}")
    tgt = load_target(target)
    n_threads = threads or tgt.threads
    with open_device(device, target=tgt, **overrides) as dev:
        lats = dev.time([Job(a, SUFFIX_RUNTIMES[a.suffix]) for a in artifacts], runs, warmup=warmup,
                        threads=n_threads, profile_runs=profile_runs)
        facts = dev.facts() if not any(lat.device_facts for lat in lats) else {}
    profiles: dict[str, dict] = {}  # one per device (a farm spreads the files over several)
    summary = []
    for a, lat in zip(artifacts, lats, strict=True):
        if lat.source != "measured":
            raise RuntimeUnavailable(lat.reason or f"{a.name} was not measured")
        raw = lat.extra.pop("raw", None) or {}
        via = lat.via or dev.uri
        d_facts = lat.device_facts or facts
        device_id = lat.device_id or device_id_from_facts(d_facts, via)
        prof = profiles.setdefault(device_id, new_profile(tgt.name, device_id, d_facts, via.split("://", 1)[0]))
        t = {k: getattr(lat, k) for k in ("p50_ms", "p90_ms", "min_ms", "mean_ms", "runs")}
        per_op = raw.get("per_op") or []
        add_entry(prof, a.name, a.suffix[1:], lat.runtime, n_threads, {**t, "warmup": warmup}, per_op,
                  sha256=raw.get("sha256") or sha256_file(a), via=via, conditions=lat.conditions,
                  extra={"per_op_note": raw.get("per_op_note", ""), "harness": raw.get("harness"),
                         **({"farm_device": lat.extra["farm"]["device"]} if lat.extra.get("farm") else {}),
                         **({"label": label} if label else {})})
        print(f"{a.name}: p50 {t['p50_ms']:.3f} ms, p90 {t['p90_ms']:.3f} ms, min {t['min_ms']:.3f} ms "
              f"({t['runs']} runs, {lat.runtime}, {n_threads} thread(s), {len(per_op)} ops profiled) on {lat.device}")
        summary.append({"artifact": a.name, "runtime": lat.runtime, "device_id": device_id,
                        **{k: t[k] for k in ("p50_ms", "p90_ms", "min_ms", "runs")}})
    paths = [str(save_profile(p, out)) for p in profiles.values()] if save else []
    for path in paths:
        print(f"profile: {path}")
    first = next(iter(profiles.values()))
    print(json.dumps({"target": tgt.name, "device_id": first["device_id"], "via": dev.uri,
                      "profile": paths[0] if paths else None, "profiles": paths, "source": "measured",
                      "artifacts": summary}))


def validate_out_dir(out: Path | None) -> Path:
    """Where --validate writes its profile: the folder the user names, else a run folder, never the profiles/ that
    ship with edgekit (those change only on purpose: name them with --out)."""
    return out if out is not None else Path("runs") / "profile-validate"


def _validate(target: str, device: str, threads: int, runs: int, warmup: int, profile_runs: int, variants: int,
              train: int, model: Path | None, sequential: bool, out: Path) -> None:
    from edgekit.commands._validate import validate_host
    from edgekit.errors import InputError, SettingsError
    from edgekit.targets import load_target

    if not load_target(target).is_host or device != "local":
        raise SettingsError("--validate runs on this machine: use --target host --device local")
    if variants < 5 or train < 2 or runs < 20:
        raise SettingsError("--validate needs --variants >= 5, --train >= 2 and --runs >= 20")
    if model is not None and not model.is_file():
        raise InputError(f"no such model: {model}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is not a folder")
    result = validate_host(variants=variants, train=train, threads=threads, runs=runs, warmup=warmup,
                           profile_runs=profile_runs, model=model, sequential=sequential, profiles_root=out,
                           log=lambda msg: print(f"[validate] {msg}", file=sys.stderr))
    for r in result["rows"]:
        print(f"{r['variant']:>10}: predicted {r['predicted_p50_ms']:8.3f} ms  measured {r['measured_p50_ms']:8.3f} ms"
              f"  error {r['err_pct']:+6.1f}%")
    print(json.dumps(result["summary"]))
