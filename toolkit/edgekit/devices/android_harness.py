"""Android by hand: a shell script with the exact adb commands edgekit runs, and its log imported back as a profile.

THIS PATH HAS NOT RUN ON A PHONE (see edgekit.devices.adb).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.devices.adb import (
    APK_ACTIVITY,
    APK_PACKAGE,
    LOG_TAG,
    REMOTE_BINARY,
    benchmark_args,
    facts_from_props,
    parse_getprop,
    parse_thermal,
    profile_from_log,
    remote_model_path,
)
from edgekit.devices.benchmark_log import parse_benchmark_output
from edgekit.errors import InputError
from edgekit.fileio import sha256_file

if TYPE_CHECKING:
    from edgekit.targets import Target


SECTION = "=== edgekit: {} ==="
SECTIONS = ("getprop", "cpus", "thermal before", "benchmark_model", "thermal after")


def harness_script(model: Path, target: Target, threads: int, runs: int, warmup: int, serial: str = "",
                   tool: str = "binary", binary: str = "android_aarch64_benchmark_model",
                   log: str = "edgekit-android.log") -> str:
    """A POSIX shell script with the adb commands `profile_artifact_adb` runs, writing one log that
    `edgekit profile --from-log LOG --target T` imports (device facts and thermal state included)."""
    for what, value in (("model path", str(model)), ("log", log), ("binary", binary), ("serial", serial)):
        # Every value is shell-quoted, but a line break would still end a comment line of the script.
        if not value.isprintable():
            raise InputError(f"android-harness: the {what} {value!r} contains a line break or control character; "
                             f"rename it")
    spec = target.runtime_for("tflite")
    remote = remote_model_path(model)
    args = benchmark_args(remote, threads, warmup, runs, xnnpack=bool(spec and spec.delegate == "xnnpack"))
    q = shlex.quote
    adb = "adb" + (f" -s {q(serial)}" if serial else "")
    lines = ["#!/bin/sh",
             f"# Measure {q(model.name)} on an Android phone with TFLite's benchmark_model ({tool}); written by edgekit",
             f"# for target {target.name}: {threads} thread(s), {warmup} warm-up and {runs} timed runs, op profiling.",
             "# Run it where `adb devices` lists the phone, then import the log:",
             f"#   edgekit profile {q(model.name)} --target {q(target.name)} --from-log {q(log)}",
             "set -eu", f"ADB={q(adb)}", f"LOG={q(log)}", ": > \"$LOG\"",
             "section() { echo \"=== edgekit: $1 ===\" >> \"$LOG\"; }",
             "$ADB get-state",
             "section getprop; $ADB shell getprop >> \"$LOG\"",
             "section cpus; $ADB shell cat /sys/devices/system/cpu/possible >> \"$LOG\"",
             "section 'thermal before'; $ADB shell dumpsys thermalservice >> \"$LOG\" || true",
             f"$ADB push {q(str(model))} {q(remote)}"]
    if tool == "apk":
        joined = " ".join(args)
        # As TFLite's docs write it ('"--graph=... --num_threads=4"'): the phone's shell gets one double-quoted word.
        es_args = f"'\"{joined}\"'" if re.fullmatch(r"[A-Za-z0-9_./=: -]+", joined) else q(q(joined))
        lines += [f"# once: $ADB install -r -d -g benchmark_model.apk   ({APK_PACKAGE})",
                  "$ADB logcat -c",
                  f"$ADB shell am start -S -W -n {APK_ACTIVITY} --es args {es_args}",
                  "echo 'waiting for the benchmark APK to finish (logcat tag tflite)...'",
                  f"until $ADB logcat -d -s {LOG_TAG}:V | grep -q 'nodes observed'; do sleep 2; done",
                  f"section benchmark_model; $ADB logcat -d -v threadtime -s {LOG_TAG}:V >> \"$LOG\""]
    else:
        lines += [f"$ADB push {q(binary)} {REMOTE_BINARY}   # TFLite's prebuilt benchmark_model for arm64",
                  f"$ADB shell chmod 755 {REMOTE_BINARY}",
                  f"section benchmark_model; $ADB shell {REMOTE_BINARY} {' '.join(q(a) for a in args)} "
                  "| tee -a \"$LOG\""]
    lines += ["section 'thermal after'; $ADB shell dumpsys thermalservice >> \"$LOG\" || true",
              f"$ADB shell rm -f {q(remote)}", "echo \"log: $LOG\"", ""]
    return "\n".join(lines)


def split_sections(text: str) -> dict[str, str]:
    """The sections of a harness log; text without section markers is all benchmark_model output.

    Read line by line (no regex over the whole log), so a hostile log costs time linear in its length.
    """
    head, tail = SECTION.split("{}")
    out: dict[str, str] = {}
    name, body = "preamble", []
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip()
        if stripped.startswith(head) and stripped.endswith(tail) and len(stripped) > len(head) + len(tail):
            out[name] = "".join(body)
            name, body = stripped[len(head):-len(tail)].strip(), []
        else:
            body.append(line)
    if name == "preamble":
        return {"benchmark_model": text}
    out[name] = "".join(body)
    return out


def profile_from_harness_log(text: str, target: Target | str, artifact: Path | None = None,
                             threads: int | None = None, via: str = "log") -> dict[str, Any]:
    """Imports a harness log (or plain benchmark_model output / APK logcat) as a profile.

    When `artifact` is given, its name and sha256 are recorded, and a model pushed under edgekit's remote name
    (edgekit-<sha256[:8]>-NAME) must be that file.
    """
    sec = split_sections(text)
    facts = None
    if sec.get("getprop", "").strip():
        facts = {**facts_from_props(parse_getprop(sec["getprop"]), sec.get("cpus", "")), "serial": ""}
    conditions: dict[str, Any] = {}
    for key in ("thermal before", "thermal after"):
        if sec.get(key, "").strip():
            conditions[key.split()[1]] = parse_thermal(sec[key])
    if conditions:
        conditions["throttling"] = any(c.get("throttling") for c in conditions.values() if isinstance(c, dict))
        conditions["temperature_c"] = (conditions.get("after") or {}).get("temperature_c")
    name, sha = None, ""
    if artifact is not None:
        name, sha = artifact.name, sha256_file(artifact)
        graph = parse_benchmark_output(sec["benchmark_model"])["params"].get("Graph", "")
        m = re.search(r"edgekit-([0-9a-f]{8})-", graph)
        if m and m[1] != sha[:8]:
            raise InputError(f"the log measured a model with sha256 {m[1]}..., not {artifact} ({sha[:8]}...)")
    return profile_from_log(sec["benchmark_model"], target, artifact_name=name, sha256=sha, device_facts=facts,
                            threads=threads, via=via, conditions=conditions)
