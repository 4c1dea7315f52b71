"""`edgekit android-harness`: the exact adb commands for measuring a .tflite on a phone by hand; and the Android side of
`edgekit profile` (adb:// devices and --from-log), called from commands/profile.py.

The Android path has not run on a phone: it is tested on documented-format output and recorded adb sequences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(name="android-harness")(android_harness)


def android_harness(
    artifact: Annotated[Path, typer.Argument(help="the .tflite file to measure")],
    target: Annotated[str, typer.Option(help="target the phone is (see `edgekit targets`)")] = "android-arm64",
    threads: Annotated[int | None, typer.Option(help="benchmark threads (default: the target's)")] = None,
    runs: Annotated[int, typer.Option(help="timed runs (benchmark_model --num_runs)")] = 50,
    warmup: Annotated[int, typer.Option(help="warm-up runs (--warmup_runs)")] = 5,
    serial: Annotated[str, typer.Option(help="adb serial (default: the only attached device)")] = "",
    apk: Annotated[bool, typer.Option(help="use the benchmark APK and logcat instead of the native binary")] = False,
    binary: Annotated[str, typer.Option(help="local path of TFLite's prebuilt arm64 benchmark_model")]
        = "android_aarch64_benchmark_model",
    log: Annotated[str, typer.Option(help="log file the script writes (import it with --from-log)")]
        = "edgekit-android.log",
    out: Annotated[Path | None, typer.Option(help="write the script here (default: print it)")] = None,
) -> None:
    """Write the adb commands that measure ARTIFACT on an Android phone with TFLite's benchmark_model; import the
    log they write with `edgekit profile ARTIFACT --target T --from-log LOG`."""
    from edgekit.devices.android_harness import harness_script
    from edgekit.errors import InputError, SettingsError
    from edgekit.fileio import write_text
    from edgekit.targets import load_target

    if not artifact.is_file():
        raise InputError(f"no such artifact: {artifact}")
    if artifact.suffix != ".tflite":
        raise SettingsError(f"{artifact}: benchmark_model runs .tflite files")
    if runs < 1 or warmup < 0:
        raise SettingsError(f"--runs must be at least 1 and --warmup at least 0, got {runs} and {warmup}")
    tgt = load_target(target)
    script = harness_script(artifact.resolve(), tgt, threads or tgt.threads, runs, warmup, serial,
                            "apk" if apk else "binary", binary, log)
    if out is None:
        print(script, end="")
        return
    write_text(out, script)
    out.chmod(0o755)
    print(f"wrote {out}; run it, then: edgekit profile {artifact} --target {tgt.name} --from-log {log}")


def profile_android(artifacts: list[Path] | None, target: str, device: str, from_log: Path | None,
                    threads: int | None, runs: int | None, warmup: int, save: bool, out: Path | None = None) -> None:
    """`edgekit profile` for Android: --device adb://SERIAL[?tool=apk] measures; --from-log imports a log."""
    from edgekit.errors import InputError, SettingsError
    from edgekit.latency.profile import save_profile
    from edgekit.targets import load_target

    tgt = load_target(target)
    if tgt.is_host:
        raise SettingsError("Android logs and adb devices are not the host: pass --target android-arm64 "
                            "(or the target that describes the phone)")
    for a in artifacts or []:
        if not a.is_file():
            raise InputError(f"no such artifact: {a}")
    if from_log is not None:
        from edgekit.devices.android_harness import profile_from_harness_log

        if len(artifacts or []) > 1:
            raise SettingsError("--from-log imports one benchmark_model run: pass at most one artifact")
        if not from_log.is_file():
            raise InputError(f"no such log: {from_log}")
        prof = profile_from_harness_log(from_log.read_text(errors="replace"), tgt,
                                        (artifacts or [None])[0], threads, via=f"log:{from_log.name}")
        profiles = [prof]
    else:
        from edgekit.devices import Job, open_device

        if not device.startswith("adb:") or not artifacts:
            raise SettingsError("Android profiling needs --device adb://SERIAL and one or more .tflite files")
        bad = [a for a in artifacts if a.suffix != ".tflite"]
        if bad:
            raise SettingsError(f"{bad[0]}: benchmark_model runs .tflite files")
        with open_device(device, target=tgt) as phone:
            lats = phone.time([Job(a, "litert") for a in artifacts], runs or 50, warmup=warmup,
                              threads=threads or tgt.threads)
        profiles = [lat.extra["raw"]["profile"] for lat in lats]
    summary = []
    for p in profiles:
        for e in p["entries"]:
            t = e["timing"]
            print(f"{e['artifact']}: mean {t['p50_ms']:.3f} ms (std {t.get('std_ms', 0):.3f}, min {t['min_ms']:.3f}, "
                  f"{t['runs']} runs, {e['threads']} thread(s), {len(e['per_op'])} ops profiled) on "
                  f"{p['device'].get('model')} via {e['via']}")
            summary.append({"artifact": e["artifact"], "runtime": e["runtime"],
                            **{k: t[k] for k in ("p50_ms", "p90_ms", "min_ms", "runs")}, "ops": len(e["per_op"])})
    paths = [str(save_profile(p, out)) for p in profiles] if save else []
    for path in dict.fromkeys(paths):
        print(f"profile: {path}")
    print(json.dumps({"target": tgt.name, "device_id": profiles[0]["device_id"], "source": profiles[0]["source"],
                      "profile": paths[0] if paths else None, "artifacts": summary}))
