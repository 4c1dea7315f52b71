"""`ssh://[user@]host[:port][?options]`: a Linux board (Raspberry Pi, any aarch64 / x86 Linux) over OpenSSH, timed
by the self-contained harness (edgekit/measure/harness.py, copied to a temporary folder on every call). Transport,
safety and errors: edgekit.measure.ssh; URI options: edgekit.measure.device.parse_device_uri."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.devices import BaseDevice, Job
from edgekit.errors import RuntimeUnavailable

if TYPE_CHECKING:
    from edgekit.report import Latency
    from edgekit.targets import Target


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
        from edgekit.measure.device import parse_device_uri

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
        from edgekit.measure.ssh import device_facts_over_ssh

        return device_facts_over_ssh(self.ssh)

    def runtimes(self) -> tuple[str, ...]:
        from edgekit.measure.device import HARNESS_RUNTIMES

        return HARNESS_RUNTIMES

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """One harness run on the device, every artifact interleaved; when a runtime is missing there, one run per
        runtime, so the artifacts of the missing one get source "none" (the install command as the reason) and the
        others are measured."""
        from edgekit.measure.device import HARNESS_RUNTIMES
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
        from edgekit.devices.local import harness_latency
        from edgekit.measure.device import SUFFIX_RUNTIMES
        from edgekit.measure.ssh import measure_many_over_ssh

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
        from edgekit.measure.ssh import run_over_ssh

        return run_over_ssh(self.ssh, artifact.path, inputs, artifact.runtime)


def _control_dir() -> str:
    """A private (0700) folder for the control socket: whoever can reach it can run commands on the device. Short
    paths: a Unix socket path has about 100 characters."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="edgekit-ssh-", dir=base)
