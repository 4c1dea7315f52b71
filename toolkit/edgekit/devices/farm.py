"""`farm:devices.toml[?labels=a,b]`: the devices of a farm file behind one queue, used like one device.

Each call's artifacts form one measurement: they are timed side by side on ONE device (before/after stay
comparable). Measurements go to a queue; one thread per device slot takes the next one when its slot is free (a
lease shared with the other processes of this machine: edgekit.devices.lease), so measurements spread over every
device of the target, faster devices take more, and a search's worker processes never share a slot. A measurement
that fails on a device (unreachable, dropped connection, timeout, harness error) is retried on another device; a
device that fails `down_after` times in a row is out until `recheck_s` has passed. Every Latency says which device
measured it (`device_id`, `via`, `device_facts`) and, in `extra["farm"]`, the farm device's name, labels and the
attempts it took.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.devices import BaseDevice, Job, open_device
from edgekit.devices.farmfile import FarmDevice, FarmSpec, load_farm
from edgekit.devices.lease import Leases
from edgekit.errors import EdgekitError, InputError, RuntimeUnavailable, SettingsError

if TYPE_CHECKING:
    import numpy as np

    from edgekit.report import Latency
    from edgekit.targets import Target

POLL_S = 0.05


@dataclass
class Health:
    """What the farm knows about one device in this process."""

    failures: int = 0  # in a row
    down_until: float = 0.0
    last_error: str = ""
    done: int = 0
    seconds: float = 0.0  # wall time of its finished measurements, for "faster devices take more"

    def mean_s(self) -> float:
        return self.seconds / self.done if self.done else 0.0


@dataclass
class _Task:
    index: int
    jobs: Sequence[Job]
    tried: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    partial: list[Any] | None = None  # the best result so far when a device could run only some artifacts


@dataclass
class FarmStats:
    """Counts over the farm's life in this process (the benchmark reads them)."""

    asked: int = 0
    measured: int = 0
    retried: int = 0  # measurements that needed another device
    failed: int = 0  # measurements no device could take (recorded as source "none" with the errors)
    by_device: Counter = field(default_factory=Counter)


class Farm(BaseDevice):
    """Every device of a farm file that fits the target (and the labels).

    Args:
        uri: farm:PATH[?labels=a,b].
        target: the target to measure for: only its devices are used (required to time).
        spec: an already parsed FarmSpec (instead of reading PATH).
        opener: opens a member's URI (tests inject fakes); default edgekit.devices.open_device.
    """

    scheme = "farm"

    def __init__(self, uri: str, target: Target | None = None, spec: FarmSpec | None = None,
                 opener: Any = None, **_: Any) -> None:
        super().__init__(target)
        path, _, query = uri.partition(":")[2].partition("?")
        if not path:
            raise SettingsError(f"device '{uri}': expected farm:PATH (a devices.toml)")
        labels = tuple(x for x in dict(urllib.parse.parse_qsl(query)).get("labels", "").split(",") if x)
        self.spec = spec or load_farm(path)
        self.uri = f"farm:{self.spec.path}" + (f"?labels={','.join(labels)}" if labels else "")
        self.members = self.spec.select(target.name if target else None, labels)
        if not self.members:
            raise SettingsError(f"farm {self.spec.path} has no device for target "
                                f"{target.name if target else '(any)'}{' with labels ' + ','.join(labels) if labels else ''}"
                                f" (its targets: {', '.join(self.spec.targets)})")
        self._opener = opener or open_device
        self._devices: dict[str, Any] = {}
        self.health = {m.name: Health() for m in self.members}
        self.stats = FarmStats()
        self.leases = Leases(self.spec.lock_dir or None)
        self._lock = threading.Condition()

    def device(self, m: FarmDevice) -> Any:
        """The member as a Device (opened once, bound to the member's own target)."""
        if m.name not in self._devices:
            from edgekit.targets import load_target

            self._devices[m.name] = self._opener(m.uri, target=load_target(m.target), timeout=self.spec.timeout_s)
        return self._devices[m.name]

    def _read_facts(self) -> dict[str, Any]:
        return {"farm": str(self.spec.path), "devices": [m.name for m in self.members],
                "targets": sorted({m.target for m in self.members})}

    def runtimes(self) -> tuple[str, ...]:
        return tuple(sorted({r for m in self.members for r in self.device(m).runtimes()}))

    def close(self) -> None:
        for d in self._devices.values():
            d.close()

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """One measurement: the artifacts side by side on one device of the farm."""
        return self.map([artifacts], runs, warmup=warmup, threads=threads, profile_runs=profile_runs)[0]

    def map(self, groups: Sequence[Sequence[Job]], runs: int, *, warmup: int = 5, threads: int = 1,
            profile_runs: int = 0) -> list[list[Latency]]:
        """Many measurements spread over the farm's devices at once; one list of latencies per group, in order."""
        if self.target is None:
            raise SettingsError(f"{self.uri}: a farm measures for a target (its devices are chosen by it)")
        tasks = [_Task(i, g) for i, g in enumerate(groups)]
        run = _Run(self, tasks, dict(runs=runs, warmup=warmup, threads=threads, profile_runs=profile_runs))
        run.start()
        return run.results  # type: ignore[return-value]

    def up(self) -> list[FarmDevice]:
        now = time.monotonic()
        return [m for m in self.members if self.health[m.name].down_until <= now]

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        """On the first device that can run it (a failing one is skipped)."""
        errors = []
        for m in self.up():
            try:
                return self.device(m).run(artifact, inputs)
            except (EdgekitError, NotImplementedError) as e:
                errors.append(f"{m.name}: {e}")
        raise RuntimeUnavailable(f"{self.uri}: no device ran {artifact.path.name} ({'; '.join(errors) or 'none up'})")


class _Run:
    """One map() call: a queue of measurements and a thread per up device slot.

    A slot thread waits (without holding its lease) until a queued measurement is one its device has not failed,
    takes the slot's lease (another process may hold it: then it waits), and takes the measurement unless a faster
    slot of this process is free for it at the same moment. It ends when nothing is left that its device could
    still be asked to do.
    """

    def __init__(self, farm: Farm, tasks: list[_Task], kw: dict[str, Any]) -> None:
        self.farm, self.kw = farm, kw
        self.queue = list(tasks)
        self.inflight: list[_Task] = []
        self.results: list[list[Latency] | None] = [None] * len(tasks)
        self.pending = len(tasks)
        self.idle: dict[tuple[str, int], float] = {}  # slots holding a lease and choosing work -> mean seconds
        farm.stats.asked += len(tasks)

    def start(self) -> None:
        threads = [threading.Thread(target=self._slot, args=(m, s), daemon=True)
                   for m in self.farm.up() for s in range(m.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.farm._lock:
            for task in list(self.queue):  # every device is down: what is left is recorded, not lost
                self._give_up(task, "no device of the farm is up")

    def _wanted(self, m: FarmDevice) -> bool:
        """Whether this device may still be asked for anything (lock held)."""
        return (self.pending > 0 and self.farm.health[m.name].down_until <= time.monotonic()
                and any(m.name not in t.tried for t in self.queue + self.inflight))

    def _slot(self, m: FarmDevice, slot: int) -> None:
        lock = self.farm._lock
        while True:
            with lock:
                if not self._wanted(m):
                    return
                if not any(m.name not in t.tried for t in self.queue):
                    lock.wait(0.2)  # in flight elsewhere: it may fail and come back
                    continue
            lease = self.farm.leases.try_acquire(m.display, slot)
            if lease is None:  # another process measures on this slot
                time.sleep(POLL_S)
                continue
            with lock:
                task = self._take(m, (m.name, slot))
            if task is None:
                lease.release()
                continue
            self._measure(m, task, lease)

    def _take(self, m: FarmDevice, key: tuple[str, int]) -> _Task | None:
        """The next measurement for this slot, unless a faster free slot of this process takes it (a slow board
        gets fewer). Lock held."""
        lock, speed = self.farm._lock, self.farm.health[m.name].mean_s()
        self.idle[key] = speed
        lock.notify_all()
        try:
            while self._wanted(m):
                self._fail_impossible()
                mine = [t for t in self.queue if m.name not in t.tried]
                if not mine:
                    return None
                faster = [k for k, v in self.idle.items() if k[0] != m.name and v < speed
                          and k[0] not in mine[0].tried]
                if not faster:
                    self.queue.remove(mine[0])
                    self.inflight.append(mine[0])
                    return mine[0]
                lock.wait(0.05)
            return None
        finally:
            self.idle.pop(key, None)

    def _fail_impossible(self) -> None:
        up = {m.name for m in self.farm.up()}
        for t in list(self.queue):
            if not (up - set(t.tried)) or len(t.tried) > self.farm.spec.retries:
                self._give_up(t, "no other device of the farm could take it")

    def _give_up(self, task: _Task, why: str) -> None:
        from edgekit.report import Latency

        for q in (self.queue, self.inflight):
            if task in q:
                q.remove(task)
        reason = f"{why}; tried {', '.join(task.tried) or 'none'}: {'; '.join(task.errors)[:600]}"
        if task.partial is not None:  # what some device measured stands; the rest says why not
            self.results[task.index] = task.partial
        else:
            self.results[task.index] = [Latency.none(reason, device=self.farm.uri, runtime=j.runtime,
                                                     farm={"tried": list(task.tried)}) for j in task.jobs]
        self.farm.stats.failed += 1
        self.pending -= 1
        self.farm._lock.notify_all()

    def _measure(self, m: FarmDevice, task: _Task, lease: Any) -> None:
        farm = self.farm
        start = time.monotonic()
        try:
            with lease:
                lats = farm.device(m).time(task.jobs, **self.kw)
        except InputError as e:  # the artifact itself is bad: no device will do better
            with farm._lock:
                task.tried.append(m.name)
                task.errors.append(f"{m.name}: {e}")
                self._give_up(task, "the artifact was refused")
            return
        except Exception as e:  # noqa: BLE001 (any failure of a device is retried on another)
            self._failed(m, task, e)
            return
        for lat in lats:
            lat.extra["farm"] = {"device": m.name, "labels": list(m.labels), "attempts": len(task.tried) + 1,
                                 "failed_on": list(task.tried)}
        missing = [lat.reason for lat in lats if lat.source != "measured"]
        if missing:  # e.g. a runtime this device lacks: another device may have it
            if task.partial is None or sum(x.source == "measured" for x in lats) > sum(
                    x.source == "measured" for x in task.partial):
                task.partial = lats
            self._failed(m, task, RuntimeUnavailable("; ".join(str(r) for r in missing)))
            return
        with farm._lock:
            h = farm.health[m.name]
            h.failures, h.done, h.seconds = 0, h.done + 1, h.seconds + time.monotonic() - start
            farm.stats.measured += 1
            farm.stats.by_device[m.name] += 1
            if task.tried:
                farm.stats.retried += 1
            self.inflight.remove(task)
            self.results[task.index] = lats
            self.pending -= 1
            farm._lock.notify_all()

    def _failed(self, m: FarmDevice, task: _Task, e: Exception) -> None:
        """A device failed a measurement: count it against the device (a missing runtime does not take the device
        out; a device that is not what its target says does), and queue the measurement for another device."""
        farm = self.farm
        with farm._lock:
            h = farm.health[m.name]
            h.last_error = f"{type(e).__name__}: {e}"[:300]
            if not isinstance(e, RuntimeUnavailable):
                h.failures += 1
                if h.failures >= farm.spec.down_after or isinstance(e, SettingsError):
                    h.down_until = time.monotonic() + farm.spec.recheck_s
            task.tried.append(m.name)
            task.errors.append(f"{m.name}: {str(e)[:200]}")
            self.inflight.remove(task)
            self.queue.insert(0, task)
            self._fail_impossible()
            farm._lock.notify_all()
