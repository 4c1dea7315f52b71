"""`ssh://[user@]host[:port][?options]`: a Linux board (Raspberry Pi, any aarch64 / x86 Linux) over OpenSSH, timed
by the self-contained harness (edgekit/measure/harness.py, copied to a temporary folder on every call). Transport,
safety and errors: edgekit.measure.ssh; URI options: edgekit.measure.device.parse_device_uri."""

from __future__ import annotations

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

    def __init__(self, uri: str, target: Target | None = None, **overrides: Any) -> None:
        from edgekit.measure.device import parse_device_uri

        super().__init__(target)
        self.parsed = parse_device_uri(uri)
        self.ssh = self.parsed.ssh_target(**overrides)
        self.uri = self.parsed.display

    def _read_facts(self) -> dict[str, Any]:
        from edgekit.measure.ssh import device_facts_over_ssh

        return device_facts_over_ssh(self.ssh)

    def runtimes(self) -> tuple[str, ...]:
        from edgekit.measure.device import HARNESS_RUNTIMES

        return HARNESS_RUNTIMES

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """One harness run per runtime (its artifacts interleaved); a runtime missing on the device leaves its
        artifacts unmeasured, with the install command as the reason, and the others measured."""
        from edgekit.devices.local import harness_latency
        from edgekit.measure.device import HARNESS_RUNTIMES
        from edgekit.measure.ssh import measure_many_over_ssh
        from edgekit.report import Latency

        out: dict[int, Latency] = {}
        by_runtime: dict[str, list[int]] = {}
        for i, j in enumerate(artifacts):
            if j.runtime in HARNESS_RUNTIMES:
                by_runtime.setdefault(j.runtime, []).append(i)
            else:
                out[i] = Latency.none(f"the device harness runs {', '.join(HARNESS_RUNTIMES)}, not {j.runtime}",
                                      device=self.uri, via=self.uri, runtime=j.runtime)
        for runtime, idx in by_runtime.items():
            try:
                results = measure_many_over_ssh(self.ssh, [artifacts[i].path for i in idx], runtime, threads, runs,
                                                warmup, profile_runs)
            except RuntimeUnavailable as e:
                for i in idx:
                    out[i] = Latency.none(str(e), device=self.uri, via=self.uri, runtime=runtime)
                continue
            for i, res in zip(idx, results, strict=True):
                self.check(res["device"])  # the facts that came with this very timing
                self._facts = res["device"]
                out[i] = harness_latency(res, self.uri, threads)
        return [out[i] for i in range(len(artifacts))]

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        from edgekit.measure.ssh import run_over_ssh

        return run_over_ssh(self.ssh, artifact.path, inputs, artifact.runtime)
