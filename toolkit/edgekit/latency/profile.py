"""Latency profiles: what was measured on one device, with its provenance. Data written only by measurement.

A profile lives at `profiles/<target>/<device-id>.json` (under the project root, or EDGEKIT_HOME) and looks like:

    {
      "schema": 1,
      "kind": "edgekit-latency-profile",
      "target": "rpi4",                      # target name (targets/<name>.toml)
      "device_id": "raspberrypi-aarch64",    # [a-z0-9._-]+, derived from the device's facts (see device_id_from_facts)
      "source": "ssh",                       # how the device was reached: local | ssh | adb | node | chromium | ...
      "device": {...},                       # device facts at the last measurement: uname, cpu, cores, governor,
                                             # temperature_c, throttling, ... (harness.device_facts())
      "edgekit_version": "0.1.0",
      "created": "2026-11-25T12:00:00Z", "updated": "...",
      "entries": [
        {
          "artifact": "mnv2.tflite",         # file name of the measured artifact
          "sha256": "...",                   # its content hash (entries are merged by sha256/name + runtime + threads)
          "format": "tflite",                # tflite | onnx | tvm | ...
          "runtime": "litert 2.3.0 (xnnpack)",
          "threads": 1,
          "timing": {"p50_ms": 9.1, "p90_ms": 9.8, "min_ms": 8.7, "runs": 50, "warmup": 5},
          "per_op": [{"name": "node name", "type": "Conv", "ms": 0.42, "signature": "..."}],  # may be empty
          "measured_at": "2026-11-25T12:00:00Z",
          "via": "ssh://pi@raspberrypi:22",  # exact device URI (or "local")
          "conditions": {"temperature_c": 51.2, "throttling": false, "governor": "ondemand"},
          "extra": {...}                     # anything else the runner wants to keep (e.g. kernel features)
        }
      ],
      "validation": {...}                    # optional: summary of the last `edgekit profile --validate` (predictor
                                             # error: variants, within_10pct_fraction, median_abs_err_pct, ...)
    }

`per_op[*].ms` is the mean time of that operator per inference (from the runtime's own profiler). `signature` (when
present) is a runtime-level kernel key the latency predictor matches on (see edgekit.latency.predictor).
Timings from emulators are never stored: `save_profile` refuses a profile whose facts say it was emulated.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, SettingsError
from edgekit.fileio import write_json

SCHEMA = 1
KIND = "edgekit-latency-profile"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def profiles_dir() -> Path:
    from edgekit.targets import project_root

    return project_root() / "profiles"


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def slug(text: str) -> str:
    """Lower-case file-name-safe form of `text` ([a-z0-9._-])."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return s or "device"


def device_id_from_facts(facts: dict[str, Any], via: str = "local") -> str:
    """A stable device id from its facts: `<hostname>-<arch>`, plus `-via-<transport>` when not local.

    The transport suffix keeps profiles measured through different paths (local harness, SSH, adb) apart even when
    they reach the same machine (a loopback SSH measures this machine; its id says so).
    """
    host = facts.get("hostname") or facts.get("model") or "device"
    arch = facts.get("arch") or facts.get("machine") or "unknown"
    base = slug(f"{host}-{arch}")
    transport = via.split("://", 1)[0] if via else "local"
    return base if transport == "local" else f"{base}-via-{slug(transport)}"


def new_profile(target: str, device_id: str, device_facts: dict[str, Any], source: str,
                edgekit_version: str | None = None) -> dict[str, Any]:
    """An empty profile for one target and device.

    Args:
        target: target name ("host", "rpi4", ...).
        device_id: file-name-safe device id (see device_id_from_facts).
        device_facts: the device's facts (harness.device_facts() or equivalent).
        source: how the device was reached ("local", "ssh", "adb", "node", "chromium").
        edgekit_version: defaults to the running edgekit's version.
    """
    if not _ID_RE.match(device_id):
        raise SettingsError(f"device id '{device_id}' must match {_ID_RE.pattern}")
    if not _ID_RE.match(target):
        raise SettingsError(f"target '{target}' must match {_ID_RE.pattern}")
    if edgekit_version is None:
        from edgekit.version import __version__ as edgekit_version
    t = now_iso()
    return {"schema": SCHEMA, "kind": KIND, "target": target, "device_id": device_id, "source": source,
            "device": dict(device_facts), "edgekit_version": edgekit_version, "created": t, "updated": t,
            "entries": []}


def add_entry(profile: dict[str, Any], artifact_name: str, fmt: str, runtime: str, threads: int,
              timing: dict[str, Any], per_op: list[dict[str, Any]] | None = None, *, sha256: str = "",
              via: str = "local", conditions: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adds (or replaces) one measured entry in `profile` and returns it.

    Args:
        profile: from new_profile / load_profile.
        artifact_name: the artifact's file name.
        fmt: artifact format ("tflite", "onnx", ...).
        runtime: runtime name and version as measured ("litert 2.3.0 (xnnpack)").
        threads: runtime threads.
        timing: {"p50_ms", "p90_ms", "min_ms", "runs"} (+ optional "warmup", "mean_ms").
        per_op: [{"name", "type", "ms"} (+ optional "signature")], mean ms per inference; empty if not offered.
        sha256: the artifact's content hash (entries with the same hash, runtime and threads are replaced).
        via: the device URI it was measured through.
        conditions: temperature / throttling / governor at measurement time.
        extra: free-form details kept with the entry.
    """
    for key in ("p50_ms", "p90_ms", "min_ms", "runs"):
        if key not in timing:
            raise SettingsError(f"profile entry for {artifact_name}: timing lacks '{key}'")
    if not (0 < float(timing["min_ms"]) <= float(timing["p50_ms"]) <= float(timing["p90_ms"])):
        raise SettingsError(f"profile entry for {artifact_name}: timings must satisfy 0 < min <= p50 <= p90, "
                            f"got {timing}")
    ops = []
    for op in per_op or []:
        if not {"name", "type", "ms"} <= set(op):
            raise SettingsError(f"profile entry for {artifact_name}: per_op items need name, type and ms, got {op}")
        ops.append({**op, "ms": float(op["ms"])})
    entry = {"artifact": artifact_name, "sha256": sha256, "format": fmt, "runtime": runtime, "threads": int(threads),
             "timing": dict(timing), "per_op": ops, "measured_at": now_iso(), "via": via,
             "conditions": dict(conditions or {}), "extra": dict(extra or {})}
    key = _entry_key(entry)
    profile["entries"] = [e for e in profile["entries"] if _entry_key(e) != key] + [entry]
    profile["updated"] = entry["measured_at"]
    return entry


def _entry_key(e: dict[str, Any]) -> tuple:
    return (e.get("sha256") or e["artifact"], e["runtime"], int(e["threads"]))


def profile_path(target: str, device_id: str, root: Path | None = None) -> Path:
    return (root or profiles_dir()) / target / f"{device_id}.json"


def save_profile(profile: dict[str, Any], root: Path | None = None) -> Path:
    """Writes the profile atomically, merging with the entries already on disk for the same target and device.

    Args:
        profile: the profile to write; its entries replace stored ones with the same key.
        root: the profiles folder (default: <project root>/profiles).
    """
    if profile.get("device", {}).get("emulated"):
        raise SettingsError("emulated timings are never stored as a latency profile")
    path = profile_path(profile["target"], profile["device_id"], root)
    merged = profile
    if path.is_file():
        old = load_profile_file(path)
        keys = {_entry_key(e) for e in profile["entries"]}
        merged = {**profile, "created": old.get("created", profile["created"]),
                  "entries": [e for e in old["entries"] if _entry_key(e) not in keys] + profile["entries"]}
        if "validation" in old and "validation" not in profile:
            merged["validation"] = old["validation"]  # a new measurement does not undo the last validation
    return write_json(path, merged)


def load_profile_file(path: str | Path) -> dict[str, Any]:
    """Reads and checks one profile file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read profile {path}: {e}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("schema") != SCHEMA:
        raise InputError(f"{path} is not an edgekit latency profile (schema {SCHEMA})")
    if not isinstance(data.get("entries"), list):
        raise InputError(f"{path}: 'entries' must be a list")
    return data


def load_profile(target: str, device_id: str, root: Path | None = None) -> dict[str, Any] | None:
    """The stored profile for (target, device), or None when there is none."""
    path = profile_path(target, device_id, root)
    return load_profile_file(path) if path.is_file() else None


def list_profiles(target: str | None = None, root: Path | None = None) -> list[Path]:
    """Profile files, for one target or all."""
    base = root or profiles_dir()
    pattern = f"{target}/*.json" if target else "*/*.json"
    return sorted(base.glob(pattern))
