"""`ssh://[user@]host[:port][?options]`: a Linux board (Raspberry Pi, any aarch64 / x86 Linux) over OpenSSH, timed
by the self-contained harness (devices/harness.py and the runtime loaders it imports, copied to a temporary folder
on every call). URI options and how a device is reached: edgekit.devices.uri.

Safety: the OpenSSH client checks host keys (StrictHostKeyChecking=yes; accept-new only when asked explicitly),
every command is an argument list and the one remote command line is built with shlex.quote, and every step has a
timeout. Failures become one-line errors: unreachable host, wrong or unknown host key, refused key, missing runtime.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.devices import BaseDevice, Job
from edgekit.devices.facts import (
    HARNESS,
    HARNESS_RUNTIMES,
    PORTABLE,
    PORTABLE_NAME,
    SUFFIX_RUNTIMES,
    harness_latency,
    parse_harness_json,
)
from edgekit.devices.uri import SSHTarget, parse_device_uri
from edgekit.errors import EdgekitError, InputError, RuntimeUnavailable

if TYPE_CHECKING:
    from edgekit.report import Latency
    from edgekit.targets import Target




class DeviceUnreachable(EdgekitError):
    """The device cannot be reached (refused, no route, timed out, unknown name)."""


class HostKeyError(EdgekitError):
    """The device's SSH host key does not match known_hosts, or is not known and accept-new was not asked for."""


class DeviceError(EdgekitError):
    """A step on the device failed (authentication, harness error, timeout)."""


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
    """Copies the harness, the runtime loaders it imports and `files` ((remote name, content) pairs) into a fresh
    temporary folder on the device and runs `argv` there, in one connection (a connection is the costly part of a
    measurement on a small board)."""
    harness = HARNESS.read_bytes()
    files = [(PORTABLE_NAME, PORTABLE.read_bytes()), *files]
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
    result = parse_harness_json(out[-1]) if out else None
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


class SSHDevice(BaseDevice):
    """One board over SSH.

    Args:
        uri: ssh://[user@]host[:port][?python=...&identity=...&known_hosts=...&accept_new=1&timeout=S].
        target: the target its timings must fit.
        overrides: SSHTarget fields that replace the URI's options (identity, known_hosts, python, accept_new,
            timeout, connect_timeout); empty values are ignored.
    """

    scheme = "ssh"

    def __init__(self, uri: str, target: Target | None = None, multiplex: bool = True, **overrides: Any) -> None:

        super().__init__(target)
        self.parsed = parse_device_uri(uri)
        self._control = _control_dir() if multiplex else ""
        self.ssh = self.parsed.ssh_target(**overrides, control_dir=self._control)
        self.uri = self.parsed.display
        if self._control:
            atexit.register(self.close)

    def close(self) -> None:
        """Ends the device's multiplexed SSH connection and removes its private socket folder."""
        if self._control:
            if any(os.scandir(self._control)):  # a master was started (its socket is there)
                self.ssh.close_master()
            shutil.rmtree(self._control, ignore_errors=True)
            self._control = ""

    def _read_facts(self) -> dict[str, Any]:
        return device_facts_over_ssh(self.ssh)

    def runtimes(self) -> tuple[str, ...]:

        return HARNESS_RUNTIMES

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """One harness run on the device, every artifact interleaved; when a runtime is missing there, one run per
        runtime, so the artifacts of the missing one get source "none" (the install command as the reason) and the
        others are measured."""
        from edgekit.report import Latency

        out: dict[int, Latency] = {}
        ok = []
        for i, j in enumerate(artifacts):
            if j.runtime in HARNESS_RUNTIMES:
                ok.append(i)
            else:
                out[i] = Latency.none(f"the device harness runs {', '.join(HARNESS_RUNTIMES)}, not {j.runtime}",
                                      device=self.uri, via=self.uri, runtime=j.runtime)
        try:
            self._batch(artifacts, ok, "", out, runs, warmup, threads, profile_runs)
        except RuntimeUnavailable:
            for runtime in dict.fromkeys(artifacts[i].runtime for i in ok):
                idx = [i for i in ok if artifacts[i].runtime == runtime]
                try:
                    self._batch(artifacts, idx, runtime, out, runs, warmup, threads, profile_runs)
                except RuntimeUnavailable as e:
                    out.update({i: Latency.none(str(e), device=self.uri, via=self.uri, runtime=runtime) for i in idx})
        return [out[i] for i in range(len(artifacts))]

    def _batch(self, artifacts: Sequence[Job], idx: list[int], runtime: str, out: dict, runs: int, warmup: int,
               threads: int, profile_runs: int) -> None:
        """Times artifacts[idx] in one harness process ("" runtime: each file's own, from its suffix)."""
        if not idx:
            return
        if not runtime and any(SUFFIX_RUNTIMES.get(artifacts[i].path.suffix) != artifacts[i].runtime for i in idx):
            raise RuntimeUnavailable("mixed runtimes that the file suffixes do not name")  # per runtime instead
        results = measure_many_over_ssh(self.ssh, [artifacts[i].path for i in idx], runtime, threads, runs, warmup,
                                        profile_runs)
        for i, res in zip(idx, results, strict=True):
            self.check(res["device"])  # the facts that came with this very timing
            self._facts = res["device"]
            out[i] = harness_latency(res, self.uri, threads, artifacts[i].path)

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        return run_over_ssh(self.ssh, artifact.path, inputs, artifact.runtime)


def _control_dir() -> str:
    """A private (0700) folder for the control socket: whoever can reach it can run commands on the device. Short
    paths: a Unix socket path has about 100 characters."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="edgekit-ssh-", dir=base)
