"""Runs the latency harness on a Linux device over SSH: copy harness + artifact to a temporary folder, run, fetch the
JSON, clean up.

Safety: the OpenSSH client checks host keys (StrictHostKeyChecking=yes; accept-new only when asked explicitly),
every command is an argument list and the one remote command line is built with shlex.quote, and every step has a
timeout. Failures become one-line errors: unreachable host, wrong or unknown host key, refused key, missing runtime.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, InputError, RuntimeUnavailable

HARNESS = Path(__file__).with_name("harness.py")


class DeviceUnreachable(EdgekitError):
    """The device cannot be reached (refused, no route, timed out, unknown name)."""


class HostKeyError(EdgekitError):
    """The device's SSH host key does not match known_hosts, or is not known and accept-new was not asked for."""


class DeviceError(EdgekitError):
    """A step on the device failed (authentication, harness error, timeout)."""


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one device over SSH.

    Args:
        host: host name or address.
        user: login user ("" uses the SSH default).
        port: SSH port.
        identity: private key file (default: the SSH client's own).
        known_hosts: known_hosts file (default: the SSH client's own).
        accept_new: add an unknown host key on first contact (never replaces a changed one).
        python: the device's Python interpreter that has the runtime installed.
        connect_timeout: seconds for the TCP connection + handshake.
        timeout: seconds for each remote step (copy, run, clean-up).
        ssh: the ssh client binary.
    """

    host: str
    user: str = ""
    port: int = 22
    identity: str = ""
    known_hosts: str = ""
    accept_new: bool = False
    python: str = "python3"
    connect_timeout: int = 10
    timeout: int = 600
    ssh: str = "ssh"

    @property
    def uri(self) -> str:
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def base_args(self) -> list[str]:
        args = [self.ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new else 'yes'}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR",
                "-p", str(self.port)]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity:
            args += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        args += ["--", f"{self.user}@{self.host}" if self.user else self.host]
        return args


def _ssh_failure(t: SSHTarget, stderr: str, step: str) -> EdgekitError:
    """Maps the OpenSSH client's stderr (exit status 255) to a one-line error."""
    s = stderr.lower()
    where = f"{t.host}:{t.port}"
    if "remote host identification has changed" in s or ("host key" in s and "mismatch" in s):
        return HostKeyError(f"wrong host key for {where}: the key it presented does not match known_hosts "
                            f"(possible impersonation); if the device was re-installed, remove the old key with "
                            f"`ssh-keygen -R '[{t.host}]:{t.port}'` and check the new fingerprint")
    if "host key verification failed" in s or "no ed25519 host key is known" in s or "host key is known" in s:
        return HostKeyError(f"the host key of {where} is not in known_hosts: connect once with `ssh -p {t.port} "
                            f"{t.host}` and check its fingerprint, or pass --accept-new-host-key (adds an unknown "
                            f"key, never replaces a changed one)")
    for needle in ("connection refused", "no route to host", "connection timed out", "could not resolve",
                   "network is unreachable", "name or service not known", "operation timed out",
                   "connection closed by", "connection reset"):
        if needle in s:
            return DeviceUnreachable(f"device {where} is unreachable ({needle}) while {step}; check that it is on, "
                                     f"reachable and running sshd on port {t.port}")
    if "permission denied" in s:
        return DeviceError(f"{where} refused the login of '{t.user or 'default user'}' while {step} "
                           f"(permission denied): install your public key on the device or pass --identity")
    first = next((line for line in stderr.strip().splitlines() if line.strip()), "no message")
    return DeviceError(f"ssh to {where} failed while {step}: {first[:200]}")


def run_remote(t: SSHTarget, argv: list[str], step: str, stdin: bytes | None = None,
               timeout: int | None = None) -> subprocess.CompletedProcess:
    """Runs one command on the device; `argv` is quoted word by word into the single remote command line."""
    remote = " ".join(shlex.quote(a) for a in argv)
    try:
        r = subprocess.run([*t.base_args(), remote], input=stdin if stdin is not None else b"",
                           capture_output=True, timeout=timeout or t.timeout)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{t.host}:{t.port}: timed out after {timeout or t.timeout} s while {step}") from None
    except FileNotFoundError:
        raise RuntimeUnavailable(f"the ssh client '{t.ssh}' is not installed (Debian: apt-get install "
                                 f"openssh-client)") from None
    if r.returncode == 255:
        raise _ssh_failure(t, r.stderr.decode(errors="replace"), step)
    return r


def _copy(t: SSHTarget, local: Path, remote_path: str) -> None:
    # Streamed over stdin into `cat`: no remote shell parsing of the name, no scp/sftp dependency on the device.
    r = run_remote(t, ["sh", "-c", 'cat > "$1"', "sh", remote_path], f"copying {local.name}",
                   stdin=local.read_bytes())
    if r.returncode != 0:
        raise DeviceError(f"{t.host}: copying {local.name} failed: {r.stderr.decode(errors='replace').strip()[:200]}")


def measure_over_ssh(t: SSHTarget, artifact: str | Path, runtime: str = "", threads: int = 1, runs: int = 50,
                     warmup: int = 5, profile_runs: int = 10) -> dict[str, Any]:
    """Times `artifact` on the device and returns the harness's JSON (see harness.py).

    Args:
        t: the device.
        artifact: the model file (.tflite / .onnx).
        runtime: "litert" or "onnxruntime" (default: from the suffix).
        threads: runtime threads on the device.
        runs: timed runs.
        warmup: untimed runs first.
        profile_runs: extra profiled runs for per-operator timings (0: off).
    """
    artifact = Path(artifact)
    if not artifact.is_file():
        raise InputError(f"no such artifact: {artifact}")
    r = run_remote(t, ["mktemp", "-d", "-t", "edgekit.XXXXXXXX"], "creating a temporary folder", timeout=60)
    workdir = r.stdout.decode().strip()
    if r.returncode != 0 or not workdir.startswith("/"):
        raise DeviceError(f"{t.host}: cannot create a temporary folder: {r.stderr.decode(errors='replace')[:200]}")
    try:
        remote_model = f"{workdir}/model{artifact.suffix}"
        _copy(t, HARNESS, f"{workdir}/harness.py")
        _copy(t, artifact, remote_model)
        argv = [t.python, f"{workdir}/harness.py", remote_model, "--threads", str(threads), "--runs", str(runs),
                "--warmup", str(warmup), "--profile-runs", str(profile_runs)]
        if runtime:
            argv += ["--runtime", runtime]
        r = run_remote(t, argv, f"timing {artifact.name}")
    finally:
        try:
            run_remote(t, ["rm", "-rf", "--", workdir], "cleaning up", timeout=60)
        except EdgekitError:
            pass  # the measurement's own error (if any) is the one worth reporting
    out = r.stdout.decode(errors="replace").strip().splitlines()
    result = _parse_json(out[-1]) if out else None
    if result is None:
        err = r.stderr.decode(errors="replace").strip()
        if r.returncode == 127 or "not found" in err:
            raise RuntimeUnavailable(f"{t.host}: Python interpreter '{t.python}' not found on the device; install "
                                     f"python3 there or pass the path of one (?python=/path/to/python3)")
        raise DeviceError(f"{t.host}: the harness failed (exit {r.returncode}): {(err.splitlines() or ['?'])[-1][:200]}")
    if not result.get("ok"):
        if result.get("kind") == "missing_runtime":
            raise RuntimeUnavailable(f"{t.host}: {result['error']} for '{t.python}'; install it on the device with "
                                     f"`{result.get('install')}`")
        raise DeviceError(f"{t.host}: {result.get('error', 'harness failed')}")
    result["artifact"] = artifact.name
    result["via"] = t.uri
    return result


def device_facts_over_ssh(t: SSHTarget) -> dict[str, Any]:
    """The device's facts (no runtime needed): copies the harness, runs `--facts-only`."""
    r = run_remote(t, ["mktemp", "-d", "-t", "edgekit.XXXXXXXX"], "creating a temporary folder", timeout=60)
    workdir = r.stdout.decode().strip()
    try:
        _copy(t, HARNESS, f"{workdir}/harness.py")
        r = run_remote(t, [t.python, f"{workdir}/harness.py", "-", "--facts-only"], "reading device facts", timeout=60)
    finally:
        run_remote(t, ["rm", "-rf", "--", workdir], "cleaning up", timeout=60)
    result = _parse_json(r.stdout.decode(errors="replace").strip().splitlines()[-1] if r.stdout.strip() else "")
    if not result or not result.get("ok"):
        raise DeviceError(f"{t.host}: cannot read device facts: {r.stderr.decode(errors='replace').strip()[:200]}")
    return result["device"]


def _parse_json(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
