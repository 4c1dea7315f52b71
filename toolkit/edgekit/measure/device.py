"""Device URIs, the harness run locally or over SSH, and the honesty check every device applies to its facts.

The devices themselves (one interface for local, ssh, adb, browser engines and farms) live in edgekit.devices; this
module holds the pieces they share and that the Android path uses, so nothing here imports a device module.

URIs parsed here (every scheme, node, chromium and farm:FILE included, is listed in edgekit.devices):
    local                                   this machine
    ssh://[user@]host[:port][?options]      a Linux board; options: python=/path/to/python3, identity=KEYFILE,
                                            known_hosts=FILE, accept_new=1 (add an unknown host key on first contact),
                                            timeout=SECONDS
    adb://[SERIAL]                          an Android device (edgekit.measure.android)

Honesty: a timing is reported as "measured" for a target only when the device's facts fit the target (same
architecture; for the host target, the very machine edgekit runs on). A mismatch is an error, not a mislabelled number.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError, RuntimeUnavailable, SettingsError
from edgekit.measure.ssh import HARNESS, SSHTarget, _parse_json, device_facts_over_ssh

if TYPE_CHECKING:
    from edgekit.targets import Target

_SSH_OPTIONS = {"python", "identity", "known_hosts", "accept_new", "timeout"}
HARNESS_RUNTIMES = ("litert", "onnxruntime", "executorch")
# what the harness runs a file with
SUFFIX_RUNTIMES = {".tflite": "litert", ".onnx": "onnxruntime", ".pte": "executorch"}


@dataclass(frozen=True)
class DeviceURI:
    scheme: str  # "local", "ssh", "adb"
    raw: str
    host: str = ""
    user: str = ""
    port: int = 22
    serial: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def ssh_target(self, **overrides: Any) -> SSHTarget:
        o = self.options
        kw: dict[str, Any] = {"host": self.host, "user": self.user, "port": self.port,
                              "python": o.get("python", "python3"), "identity": o.get("identity", ""),
                              "known_hosts": o.get("known_hosts", ""),
                              "accept_new": o.get("accept_new", "0").lower() in ("1", "true", "yes")}
        if "timeout" in o:
            kw["timeout"] = int(o["timeout"])
        kw.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return SSHTarget(**kw)

    @property
    def display(self) -> str:
        """The URI without options (key paths are local details, not provenance)."""
        if self.scheme == "ssh":
            return f"ssh://{self.user + '@' if self.user else ''}{self.host}:{self.port}"
        return self.raw.split("?", 1)[0]


def parse_device_uri(uri: str) -> DeviceURI:
    """Parses a --device value; raises SettingsError naming the accepted forms."""
    forms = "expected local, ssh://[user@]host[:port] or adb://[SERIAL]"
    if uri in ("local", "local://"):
        return DeviceURI("local", uri)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "adb":
        return DeviceURI("adb", uri, serial=parsed.netloc or parsed.path.strip("/"))
    if parsed.scheme != "ssh":
        raise SettingsError(f"device '{uri}': {forms}")
    try:
        port = parsed.port or 22
    except ValueError:
        raise SettingsError(f"device '{uri}': the port must be a number from 1 to 65535") from None
    host = parsed.hostname or ""
    if not host or host.startswith("-") or parsed.path not in ("", "/"):
        raise SettingsError(f"device '{uri}': {forms}")
    user = urllib.parse.unquote(parsed.username or "")
    if user.startswith("-") or any(c in user for c in " \t\n'\"$`\\;"):
        raise SettingsError(f"device '{uri}': invalid user name '{user}'")
    options = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
    bad = set(options) - _SSH_OPTIONS
    if bad:
        raise SettingsError(f"device '{uri}': unknown options {sorted(bad)}; allowed: {sorted(_SSH_OPTIONS)}")
    _check_ssh_options(uri, options)
    return DeviceURI("ssh", uri, host=host, user=user, port=port, options=options)


def _check_ssh_options(uri: str, options: dict[str, str]) -> None:
    if "timeout" in options and not (options["timeout"].isdigit() and 0 < int(options["timeout"]) <= 86400):
        raise SettingsError(f"device '{uri}': timeout must be a whole number of seconds from 1 to 86400, "
                            f"got '{options['timeout']}'")
    if options.get("accept_new", "0").lower() not in ("0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"device '{uri}': accept_new must be 1 or 0, got '{options['accept_new']}'")
    for key in ("python", "identity", "known_hosts"):
        if key in options and (not options[key] or any(c in options[key] for c in "\n\r\0")):
            raise SettingsError(f"device '{uri}': {key} must be a path")


def device_for_report(device: str | None) -> str | None:
    """What report.json keeps of a --device value: scheme, user, host and port, never options such as key paths.

    Raises:
        SettingsError: when the URI is malformed (checked before a run starts, not when measure reaches it).
    """
    if device is None or "://" not in device:
        return device  # local, node, chromium: names, nothing private
    scheme = device.split("://", 1)[0]
    if scheme in ("ssh", "adb"):
        return parse_device_uri(device).display
    parsed = urllib.parse.urlsplit(device)
    return f"{parsed.scheme}://{parsed.hostname or ''}"


def decode_per_op(res: dict[str, Any], artifact: Path) -> None:
    """ExecuTorch harness results carry the raw ETDump (the device needs no devtools): decode it into per_op."""
    if res.get("etdump_b64"):
        from edgekit.runtimes.executorch import per_op_from_harness

        prof = per_op_from_harness(res, artifact)
        res["per_op"], res["per_op_profile"] = prof["per_op"], {k: v for k, v in prof.items() if k != "per_op"}


def run_local_harness(artifacts: list[Path], runtime: str, threads: int, runs: int, warmup: int,
                      profile_runs: int = 10, timeout: int = 1800, profile_models: int = -1) -> list[dict[str, Any]]:
    """Runs the harness in a subprocess of this Python (the same code path a device runs); several artifacts are
    timed interleaved."""
    argv = [sys.executable, str(HARNESS), *map(str, artifacts), "--threads", str(threads), "--runs", str(runs),
            "--warmup", str(warmup), "--profile-runs", str(profile_runs), "--profile-models", str(profile_models)]
    if runtime:
        argv += ["--runtime", runtime]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"timing {len(artifacts)} artifact(s) locally took longer than {timeout} s") from None
    lines = r.stdout.strip().splitlines()
    result = _parse_json(lines[-1]) if lines else None
    if result is None:
        raise EdgekitError(f"the local harness failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    if not result.get("ok"):
        if result.get("kind") == "missing_runtime":
            raise RuntimeUnavailable(f"{result['error']}; install it with `{result.get('install')}`")
        raise EdgekitError(result.get("error", "the local harness failed"))
    results = result.get("results", [result])
    for res in results:
        res["via"] = "local"
    return results


def check_device_fits_target(facts: dict[str, Any], target: Target, uri: DeviceURI | str) -> None:
    """Refuses to call a timing "measured" for a target the device is not.

    The host target's device is this machine: a remote device must be this machine (loopback). Other targets need
    the same architecture; an emulated device never counts.

    Args:
        facts: the device's facts, as they came back with the timing.
        target: the target the timing would describe.
        uri: the device (its display form names it in the error).
    """
    from edgekit.targets import host_facts

    uri = DeviceURI("?", uri) if isinstance(uri, str) else uri

    if facts.get("emulated"):
        raise SettingsError(f"device {uri.display} is an emulator ({facts.get('cpu')}): emulated timings are "
                            f"never device latencies")
    if target.is_host:
        here = host_facts()
        same = (facts.get("hostname") == here["hostname"] and facts.get("arch") == here["arch"]
                and facts.get("cpu") == here["cpu"])
        if not same:
            raise SettingsError(f"device {uri.display} ({facts.get('hostname')}, {facts.get('cpu')}) is not this "
                                f"machine, and the host target's device is this machine: pick the target that "
                                f"describes that device (`edgekit targets`)")
        return
    if facts.get("arch") != target.arch:
        raise SettingsError(f"device {uri.display} is {facts.get('arch')} ({facts.get('cpu')}) but target "
                            f"{target.name} is {target.arch} ({target.cpu}): its timings would not be "
                            f"{target.name} latencies")


def device_label(facts: dict[str, Any], uri: DeviceURI | str) -> str:
    """'raspberrypi: Raspberry Pi 4 Model B Rev 1.4 (4 cores, aarch64) via ssh://pi@raspberrypi:22'."""
    model = facts.get("model") or facts.get("cpu")
    via = uri if isinstance(uri, str) else uri.display
    return f"{facts.get('hostname')}: {model} ({facts.get('cores')} cores, {facts.get('arch')}) via {via}"


def device_facts(uri: DeviceURI, **ssh_overrides: Any) -> dict[str, Any]:
    if uri.scheme == "ssh":
        return device_facts_over_ssh(uri.ssh_target(**ssh_overrides))
    from edgekit.measure.harness import device_facts as local_facts

    return local_facts()
