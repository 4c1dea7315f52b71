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
        control_dir: a private folder for a multiplexed connection (OpenSSH ControlMaster): the measurements of
            one device then share one authenticated connection instead of a handshake each; "" : none.
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
    control_dir: str = ""

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
        if self.control_dir:  # the master lives on alone for 60 s idle at most, if close() never comes
            args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                     "-o", "ControlPersist=60"]
        args += ["--", f"{self.user}@{self.host}" if self.user else self.host]
        return args

    def close_master(self) -> None:
        """Ends the multiplexed connection (if one is open)."""
        if not self.control_dir:
            return
        argv = self.base_args()
        try:
            subprocess.run([*argv[:-2], "-O", "exit", *argv[-2:]], capture_output=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            pass


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
                   "connection closed by", "closed by remote host", "connection reset"):
        if needle in s:
            return DeviceUnreachable(f"device {where} is unreachable ({needle}) while {step}; check that it is on, "
                                     f"reachable and running sshd on port {t.port}")
    if not s.strip():  # a multiplexed session whose connection died ends with status 255 and no message
        return DeviceUnreachable(f"device {where} is unreachable (connection lost) while {step}; check that it is "
                                 f"on, reachable and running sshd on port {t.port}")
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


# One connection per measurement: creates a temporary folder, fills it from stdin (the harness, then each file: name
# and size are the arguments, in pairs, up to "--"), runs the command after "--" in it, and removes the folder
# whatever the outcome (also when the command is cut off: the trap). No remote shell parsing of any name: the script
# is fixed, values arrive as positional parameters. Sizes are checked: a `head` that reads ahead would otherwise
# truncate a file silently. Exit status 17: the copy failed; otherwise the command's own.
COPY_FAILED = 17
_UPLOAD_RUN = ('d=$(mktemp -d -t edgekit.XXXXXXXX) || exit 1; trap \'cd /; rm -rf -- "$d"\' EXIT HUP TERM; '
               'n=$1; shift; head -c "$n" > "$d/harness.py" && [ "$(wc -c < "$d/harness.py")" -eq "$n" ] || '
               '{ echo "incomplete copy" >&2; exit 17; }; '
               'while [ "$1" != "--" ]; do head -c "$2" > "$d/$1" && [ "$(wc -c < "$d/$1")" -eq "$2" ] || '
               '{ echo "incomplete copy" >&2; exit 17; }; shift 2; done; shift; cd "$d" || exit 1; "$@"')


def _upload_and_run(t: SSHTarget, files: list[tuple[str, bytes]], argv: list[str], what: str,
                    step: str) -> subprocess.CompletedProcess:
    """Copies the harness and `files` ((remote name, content) pairs) into a fresh temporary folder on the device
    and runs `argv` there, in one connection (a connection is the costly part of a measurement on a small board)."""
    harness = HARNESS.read_bytes()
    sizes = [w for name, data in files for w in (name, str(len(data)))]
    r = run_remote(t, ["sh", "-c", _UPLOAD_RUN, "sh", str(len(harness)), *sizes, "--", *argv], step,
                   stdin=harness + b"".join(data for _, data in files))
    if r.returncode == COPY_FAILED and b"incomplete copy" in r.stderr:
        raise DeviceError(f"{t.host}: copying {what} to a temporary folder failed: "
                          f"{r.stderr.decode(errors='replace').strip()[:200] or 'no message'}")
    return r


def measure_over_ssh(t: SSHTarget, artifact: str | Path, runtime: str = "", threads: int = 1, runs: int = 50,
                     warmup: int = 5, profile_runs: int = 10) -> dict[str, Any]:
    """Times `artifact` on the device and returns the harness's JSON (see harness.py).

    One connection: the harness and the model are copied into a fresh temporary folder, the harness runs there,
    and the folder is removed when it ends.

    Args:
        t: the device.
        artifact: the model file (.tflite / .onnx).
        runtime: "litert" or "onnxruntime" (default: from the suffix).
        threads: runtime threads on the device.
        runs: timed runs.
        warmup: untimed runs first.
        profile_runs: extra profiled runs for per-operator timings (0: off).
    """
    return measure_many_over_ssh(t, [artifact], runtime, threads, runs, warmup, profile_runs)[0]


def measure_many_over_ssh(t: SSHTarget, artifacts: list[str | Path], runtime: str = "", threads: int = 1,
                          runs: int = 50, warmup: int = 5, profile_runs: int = 10) -> list[dict[str, Any]]:
    """Times several artifacts in one harness process on the device, interleaved (one run of each per round, so a
    slow phase of the device hits them alike); one result per artifact, in order. Arguments as measure_over_ssh."""
    paths = [Path(a) for a in artifacts]
    for p in paths:
        if not p.is_file():
            raise InputError(f"no such artifact: {p}")
    names = [f"model{i}{p.suffix}" for i, p in enumerate(paths)]
    what = paths[0].name if len(paths) == 1 else f"{len(paths)} artifacts"
    argv = [t.python, "harness.py", *names, "--threads", str(threads), "--runs", str(runs), "--warmup",
            str(warmup), "--profile-runs", str(profile_runs)]
    if runtime:
        argv += ["--runtime", runtime]
    r = _upload_and_run(t, [(n, p.read_bytes()) for n, p in zip(names, paths, strict=True)], argv, what,
                        f"timing {what}")
    result = _harness_result(t, r, paths[0].name)
    results = result.get("results", [result])
    for res, p in zip(results, paths, strict=True):
        res["artifact"], res["via"] = p.name, t.uri
    return results


def run_over_ssh(t: SSHTarget, artifact: str | Path, inputs: Any, runtime: str = "", threads: int = 1) -> Any:
    """Runs `artifact` on the device on `inputs` (an array of batches of its input shape) and returns its first
    output as a float32 array (one row per input)."""
    import base64
    import io

    import numpy as np

    path = Path(artifact)
    if not path.is_file():
        raise InputError(f"no such artifact: {path}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(inputs, np.float32), allow_pickle=False)
    name = f"model{path.suffix}"
    argv = [t.python, "harness.py", name, "--threads", str(threads), "--run-inputs", "inputs.npy"]
    if runtime:
        argv += ["--runtime", runtime]
    r = _upload_and_run(t, [(name, path.read_bytes()), ("inputs.npy", buf.getvalue())], argv, path.name,
                        f"running {path.name}")
    res = _harness_result(t, r, path.name)
    out = np.frombuffer(base64.b64decode(res["outputs_b64"]), np.float32)
    return out.reshape(res["shape"])


def _harness_result(t: SSHTarget, r: subprocess.CompletedProcess, name: str) -> dict[str, Any]:
    out = r.stdout.decode(errors="replace").strip().splitlines()
    result = _parse_json(out[-1]) if out else None
    if result is None:
        err = r.stderr.decode(errors="replace").strip()
        if r.returncode in (126, 127):
            raise RuntimeUnavailable(f"{t.host}: Python interpreter '{t.python}' not found on the device; install "
                                     f"python3 there or pass the path of one (?python=/path/to/python3)")
        raise DeviceError(f"{t.host}: the harness failed (exit {r.returncode}): {(err.splitlines() or ['?'])[-1][:200]}")
    if not result.get("ok"):
        if result.get("kind") == "missing_runtime":
            raise RuntimeUnavailable(f"{t.host}: {result['error']} for '{t.python}'; install it on the device with "
                                     f"`{result.get('install')}`")
        raise DeviceError(f"{t.host}: {result.get('error', 'harness failed')}")
    result["artifact"] = name
    result["via"] = t.uri
    return result


def device_facts_over_ssh(t: SSHTarget) -> dict[str, Any]:
    """The device's facts (no runtime needed): the harness with `--facts-only`, streamed to the device's Python."""
    r = run_remote(t, [t.python, "-", "-", "--facts-only"], "reading device facts", stdin=HARNESS.read_bytes(),
                   timeout=60)
    result = _harness_result(t, r, "")
    return result["device"]


def _parse_json(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
