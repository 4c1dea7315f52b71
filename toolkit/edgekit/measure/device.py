"""Device URIs and measuring artifacts on a device (local harness, SSH; adb delegates to edgekit.measure.android).

URIs:
    local                                   this machine, through the same harness a remote device runs
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
from edgekit.measure.ssh import HARNESS, SSHTarget, _parse_json, device_facts_over_ssh, measure_over_ssh

if TYPE_CHECKING:
    from edgekit.pipeline import RunContext
    from edgekit.report import Artifact
    from edgekit.targets import Target

_SSH_OPTIONS = {"python", "identity", "known_hosts", "accept_new", "timeout"}
HARNESS_RUNTIMES = ("litert", "onnxruntime")


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
    return DeviceURI("ssh", uri, host=host, user=user, port=port, options=options)


def run_harness(uri: DeviceURI, artifact: Path, runtime: str, threads: int, runs: int, warmup: int,
                profile_runs: int = 10, **ssh_overrides: Any) -> dict[str, Any]:
    """Runs the harness on the device named by `uri` (local or ssh) and returns its JSON."""
    if uri.scheme == "ssh":
        return measure_over_ssh(uri.ssh_target(**ssh_overrides), artifact, runtime, threads, runs, warmup,
                                profile_runs)
    if uri.scheme != "local":
        raise SettingsError(f"device '{uri.raw}': the harness runs locally or over ssh")
    return run_local_harness([artifact], runtime, threads, runs, warmup, profile_runs)[0]


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


def check_device_fits_target(facts: dict[str, Any], target: Target, uri: DeviceURI) -> None:
    """Refuses to call a timing "measured" for a target the device is not.

    The host target's device is this machine: a remote device must be this machine (loopback). Other targets need
    the same architecture; an emulated device never counts.
    """
    from edgekit.targets import host_facts

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


def device_label(facts: dict[str, Any], uri: DeviceURI) -> str:
    model = facts.get("model") or facts.get("cpu")
    return f"{facts.get('hostname')}: {model} ({facts.get('cores')} cores, {facts.get('arch')}) via {uri.display}"


def device_facts(uri: DeviceURI, **ssh_overrides: Any) -> dict[str, Any]:
    if uri.scheme == "ssh":
        return device_facts_over_ssh(uri.ssh_target(**ssh_overrides))
    from edgekit.measure.harness import device_facts as local_facts

    return local_facts()


def measure_artifacts_on_device(arts: list[Artifact], settings: Any, ctx: RunContext) -> None:
    """Fills each artifact's latency, timed on ctx.device (called by stages/measure.py).

    Args:
        arts: the report's artifact records (verified ones).
        settings: the measure stage's Settings (runs, warmup).
        ctx: the run context (target, threads, run folder, device URI).
    """
    uri = parse_device_uri(ctx.device)
    if uri.scheme == "adb":
        try:
            from edgekit.measure.android import measure_artifacts_adb
        except ModuleNotFoundError as e:
            if e.name != "edgekit.measure.android":
                raise
            raise RuntimeUnavailable("Android measurement (edgekit.measure.android) is not available in this "
                                     "edgekit installation") from None
        measure_artifacts_adb(arts, settings, ctx, uri.serial)
        return
    # The device's facts come back with every timing and are checked before any number is kept.
    from edgekit.report import Latency

    label = uri.display
    for a in arts:
        if a.runtime not in HARNESS_RUNTIMES:
            continue
        res = run_harness(uri, ctx.out / a.path, a.runtime, ctx.threads, settings.runs, settings.warmup,
                          profile_runs=0)
        check_device_fits_target(res["device"], ctx.target, uri)
        label = device_label(res["device"], uri)
        a.latency = Latency.measured(res["timing"], device=label, runtime=res["runtime"], threads=ctx.threads,
                                     via=uri.display, device_facts=res["device"], conditions=res["conditions"])
    for a in arts:
        if a.runtime not in HARNESS_RUNTIMES:
            a.latency = Latency.none(f"the device harness runs {', '.join(HARNESS_RUNTIMES)}, not {a.runtime}",
                                     device=label)
