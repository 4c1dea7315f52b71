"""`local`: this machine. Artifacts are timed side by side in this process, through the same runtime modules
verify uses (edgekit.runtimes); when per-operator times are asked for (`profile_runs` > 0), the harness runs them
in a subprocess, the very code a remote device runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.devices import BaseDevice, Job
from edgekit.devices.facts import (
    HARNESS,
    HARNESS_RUNTIMES,
    harness_latency,
    host_device_name,
    parse_harness_json,
)
from edgekit.errors import EdgekitError, RuntimeUnavailable, SettingsError

if TYPE_CHECKING:
    from pathlib import Path

    from edgekit.report import Latency
    from edgekit.targets import Target


TIMING_RSS_MB = 3072  # resident memory above which local timing goes on in groups (LocalDevice._in_process)


class LocalDevice(BaseDevice):
    """This machine (`local`).

    Args:
        harness: time every artifact through the harness in a subprocess (the code path a remote device runs),
            not only when per-operator times are asked for.
    """

    scheme = "local"

    def __init__(self, uri: str = "local", target: Target | None = None, harness: bool = False, **_: Any) -> None:
        super().__init__(target)
        if uri not in ("local", "local://"):
            raise SettingsError(f"device '{uri}': the local device takes no options")
        self.uri = "local"
        self.harness = harness  # always time through the harness subprocess (results in extra["raw"])

    def _read_facts(self) -> dict[str, Any]:
        from edgekit.devices.harness import device_facts

        return device_facts()

    def runtimes(self) -> tuple[str, ...]:
        from edgekit.runtimes import available

        return tuple(available())

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None, profile_first: int = -1) -> list[Latency]:
        """In-process interleaved timing; with `profile_runs` the harness in a subprocess (per-operator times of
        the first `profile_first` artifacts, -1: all), for the runtimes it runs."""
        self.check(self.facts())
        if profile_runs > 0 or self.harness:
            return self._harness(artifacts, runs, warmup, threads, profile_runs, profile_first)
        return self._in_process(artifacts, runs, warmup, threads, progress)

    def _in_process(self, jobs: Sequence[Job], runs: int, warmup: int, threads: int, progress: Any) -> list[Latency]:
        """Interleaved timing of every job in this process. Loaded runtimes hold their buffers (an ONNX Runtime
        session of a detector at 736x992 holds hundreds of MB): once this process's resident memory passes
        TIMING_RSS_MB, the jobs loaded so far are timed and released and the rest are timed in further groups, each
        beside the first job (the model as loaded, for a compress run), whose samples all groups pool."""
        from edgekit import heap
        from edgekit.devices.timing import Timing, interleaved_samples
        from edgekit.latency.profile import device_id_from_facts
        from edgekit.report import Latency
        from edgekit.runtimes import load_runner

        out: list[Latency | None] = [None] * len(jobs)
        group: list[tuple[int, Any, Any]] = []  # (job index, runner, input); group[0] is timed in every group
        samples: dict[int, list[float]] = {}
        runtimes: dict[int, str] = {}
        where: dict[int, int] = {}
        groups = 0

        def time_group() -> None:
            nonlocal groups
            got = interleaved_samples([r for _, r, _ in group], [x for *_, x in group], warmup, runs, progress)
            for (i, _, _), s in zip(group, got, strict=True):
                samples.setdefault(i, []).extend(s)
                where.setdefault(i, groups)
            groups += 1

        for i, j in enumerate(jobs):
            try:
                r = load_runner(j.runtime, j.path, threads)
            except RuntimeUnavailable as e:
                out[i] = Latency.none(str(e), device=host_device_name(), runtime=j.runtime)
                continue
            x = _input_for(j, r)
            r(x)  # the first run allocates what the runtime keeps
            runtimes[i] = r.runtime
            if len(group) > 1 and heap.resident_mb() > TIMING_RSS_MB:
                del r, x
                time_group()
                del group[1:]
                heap.trim()
                r = load_runner(j.runtime, j.path, threads)
                x = _input_for(j, r)
            group.append((i, r, x))
        if group:
            time_group()
        group.clear()
        device_id = device_id_from_facts(self.facts())
        anchor = min(samples, default=-1)
        for i, s in samples.items():
            more = {} if groups == 1 else {"timing_group": f"all {groups}" if i == anchor else
                                           f"{where[i] + 1} of {groups}"}
            out[i] = Latency.measured(Timing.from_samples(s), device=host_device_name(), runtime=runtimes[i],
                                      threads=threads, via="local", device_id=device_id, **more)
        return [x for x in out if x is not None]

    def _harness(self, jobs: Sequence[Job], runs: int, warmup: int, threads: int, profile_runs: int,
                 profile_first: int) -> list[Latency]:
        from edgekit.report import Latency

        ok = [j for j in jobs if j.runtime in HARNESS_RUNTIMES]
        runtime = ok[0].runtime if len({j.runtime for j in ok}) == 1 else ""
        results = iter(run_local_harness([j.path for j in ok], runtime, threads, runs, warmup, profile_runs,
                                         profile_models=profile_first) if ok else [])
        return [harness_latency(next(results), "local", threads, j.path) if j.runtime in HARNESS_RUNTIMES else
                Latency.none(f"the harness runs {', '.join(HARNESS_RUNTIMES)}, not {j.runtime}",
                             device=host_device_name(), runtime=j.runtime) for j in jobs]

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        from edgekit.runtimes import load_runner, run_all

        return run_all(load_runner(artifact.runtime, artifact.path, 1), np.asarray(inputs, np.float32))


def _input_for(job: Job, runner: Any) -> np.ndarray:
    from edgekit.runtimes import fit_input

    if job.input is not None:
        return fit_input(runner, job.input if hasattr(job.input, "row") else np.asarray(job.input, np.float32))
    return np.random.default_rng(0).standard_normal(runner.input_shape or (1,)).astype(np.float32)


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
    result = parse_harness_json(lines[-1]) if lines else None
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
