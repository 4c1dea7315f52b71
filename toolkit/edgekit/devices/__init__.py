"""One device interface. Every place that times or runs an artifact somewhere (the measure and quantize stages,
`edgekit profile`, the predictor's validation) opens a `Device` by its URI through `open_device`, and asks
`latency_source` where a latency for a target comes from.

    with open_device("ssh://pi@raspberrypi.local", target=load_target("rpi4")) as dev:
        latencies = dev.time([Job(Path("m.tflite"), "litert")], runs=50)     # -> list[Latency]

URIs (one lookup by scheme; a new kind of device is one entry in SCHEMES):

    local                                this machine: its runtimes in this process (the harness in a subprocess
                                         when per-operator times are asked for)
    ssh://[user@]host[:port][?options]   a Linux board over OpenSSH, timed by the harness (devices/ssh.py)
    adb://[SERIAL][?tool=apk]            an Android phone, timed by TFLite's benchmark_model (devices/adb.py)
    node, chromium                       a JavaScript engine on this machine running onnxruntime-web
    farm:FILE[?labels=a,b]               the devices of a devices.toml behind one queue (devices/farm.py)

A device never sees the run context: it takes files, returns typed `Latency` records (edgekit.report) carrying its
provenance (device, device_id, via, facts, conditions), and the stage that asked writes them into the report. When
a target is given, every timing's device facts are checked against it before a number is returned: a latency is
"measured" only on the device the target describes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgekit.errors import SettingsError

if TYPE_CHECKING:
    import numpy as np

    from edgekit.report import Artifact, Latency
    from edgekit.targets import Target

# scheme -> "module:class"; imported only when a URI of that scheme is opened (`edgekit --help` stays fast).
SCHEMES: dict[str, str] = {
    "local": "edgekit.devices.local:LocalDevice",
    "ssh": "edgekit.devices.ssh:SSHDevice",
    "adb": "edgekit.devices.adb:AndroidDevice",
    "node": "edgekit.devices.browser:NodeDevice",
    "chromium": "edgekit.devices.browser:ChromiumDevice",
    "farm": "edgekit.devices.farm:Farm",
}
_OPENERS: dict[str, Callable[..., Device]] = {}


@dataclass(frozen=True)
class Job:
    """One artifact to time or run on a device.

    Args:
        path: the file (or web bundle folder) on this machine; remote devices copy it.
        runtime: the runtime that runs it ("litert", "onnxruntime", "onnxruntime-web", ...).
        format: the artifact format ("tflite", "onnx", "web", ...); default: from the suffix.
        input: an example input batch; engines that feed real data use it (harness devices time random data of
            the model's input shape).
        name: how reports name it (default: the file name).
    """

    path: Path
    runtime: str
    format: str = ""
    input: Any = field(default=None, compare=False, repr=False)
    name: str = ""

    @property
    def fmt(self) -> str:
        return self.format or {".tflite": "tflite", ".onnx": "onnx"}.get(self.path.suffix, self.path.suffix[1:])

    @classmethod
    def from_artifact(cls, artifact: Artifact, root: Path, x: np.ndarray | None = None) -> Job:
        """A report record's file under the run folder `root`."""
        return cls(Path(root) / artifact.path, artifact.runtime, artifact.format, x, artifact.path)


@runtime_checkable
class Device(Protocol):
    """Somewhere artifacts run: this machine, a board, a phone, a JavaScript engine, or a farm of them."""

    uri: str  # display form without options (provenance: never key paths)

    def facts(self) -> dict[str, Any]:
        """What the device is: host name, architecture, CPU, cores, ... (cached after the first call)."""
        ...

    def runtimes(self) -> tuple[str, ...]:
        """The runtimes this device can time."""
        ...

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """Times the artifacts side by side (interleaved where the device can) and returns one Latency per
        artifact, in order: measured (with provenance), or source "none" with the reason for one it cannot run.
        `profile_runs` > 0 also asks for per-operator times (in `extra["raw"]["per_op"]`)."""
        ...

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        """Runs the artifact on `inputs` (batches of its input shape) and returns its first output, for checking
        that the device computes what was verified."""
        ...

    def close(self) -> None: ...


class BaseDevice:
    """What every device shares: the target it must fit, facts cached, context-manager use."""

    scheme = ""
    uri = ""

    def __init__(self, target: Target | None = None) -> None:
        self.target = target
        self._facts: dict[str, Any] | None = None

    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            self._facts = self._read_facts()
        return self._facts

    def _read_facts(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, facts: dict[str, Any]) -> None:
        """Refuses timings from a device that is not what the bound target describes (no-op without a target)."""
        if self.target is not None:
            from edgekit.devices.facts import check_device_fits_target

            check_device_fits_target(facts, self.target, self.uri)

    def close(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scheme_of(uri: str) -> str:
    """'ssh://pi@host' -> 'ssh', 'farm:devices.toml' -> 'farm', 'local' -> 'local'."""
    if "://" in uri:
        return uri.split("://", 1)[0]
    head, sep, _ = uri.partition(":")
    if sep and (head in SCHEMES or head in _OPENERS):
        return head
    return uri.split("?", 1)[0]


def register_scheme(name: str, opener: Callable[..., Device]) -> None:
    """Adds a kind of device (e.g. from a plugin): `opener(uri, target=None, **options) -> Device`."""
    _OPENERS[name] = opener


def open_device(uri: str, target: Target | None = None, **options: Any) -> Device:
    """Opens the device a URI names; the one lookup every caller uses.

    Args:
        uri: see the module docstring.
        target: when given, every timing's device facts must fit it (else SettingsError).
        options: scheme-specific overrides (ssh: identity, known_hosts, python, accept_new).
    Raises:
        SettingsError: an unknown scheme or a malformed URI.
    """
    scheme = scheme_of(uri)
    opener = _OPENERS.get(scheme)
    if opener is None:
        spec = SCHEMES.get(scheme)
        if spec is None:
            raise SettingsError(f"device '{uri}': expected local, ssh://[user@]host[:port], adb://[SERIAL], node, "
                                f"chromium or farm:FILE")
        module, _, name = spec.partition(":")
        opener = getattr(importlib.import_module(module), name)
    return opener(uri, target=target, **options)


@dataclass(frozen=True)
class LatencySource:
    """Where latencies for one target and --device come from (see latency_source).

    Attributes:
        source: "measured", "predicted" or "none".
        devices: the device URIs that measure (in report order); empty unless measured.
        primary: the device whose figure is an artifact's `latency` (the others go to `latencies`).
        explicit: the user named the device: a failure there is an error, never a quiet "none".
        reason: why a latency is predicted or not given.
        predictor: the target's latency predictor (predicted).
    """

    source: str
    devices: tuple[str, ...] = ()
    primary: str | None = None
    explicit: bool = False
    reason: str = ""
    predictor: Any = None

    @property
    def local(self) -> bool:
        """Measured in this very process on this machine (the host target's device)."""
        return self.devices == ("local",)


BROWSER_ENGINES = ("node", "chromium")


def latency_source(target: Target, device: str | None, *, for_search: bool = False) -> LatencySource:
    """The one rule for where a latency for `target` comes from, given --device (None: not given).

    - A device named: measured there (its facts are checked against the target with every timing). For the
      browser target only its engines (node, chromium) or a farm qualify.
    - None named, host target: measured on this machine.
    - None named, browser target: measured in Node and headless Chromium on this machine (Chromium's figure
      primary). Not for a search: the INT8 search scores ONNX Runtime files, which no engine start-up per
      candidate should time.
    - Otherwise none, or for a search predicted from the target's measured profile (labelled with its error)
      when there is one. Host timings are never another device's latency.
    """
    if device not in (None, ""):
        scheme = scheme_of(device)
        if scheme not in SCHEMES and scheme not in _OPENERS:
            open_device(device)  # the one-line error naming the accepted forms
        if target.device_kind == "browser" and scheme not in (*BROWSER_ENGINES, "farm"):
            raise SettingsError(f"browser target: --device must be one of {', '.join(BROWSER_ENGINES)} or a "
                                f"farm, got '{device}'")
        if target.device_kind != "browser" and scheme in BROWSER_ENGINES:
            raise SettingsError(f"--device {device} measures the browser target (wasm), not {target.name}")
        return LatencySource("measured", (device,), device, explicit=True)
    if target.is_host:
        return LatencySource("measured", ("local",), "local")
    if target.device_kind == "browser" and not for_search:
        return LatencySource("measured", BROWSER_ENGINES, "chromium")
    reason = (f"no {target.name} device attached (pass --device URI to measure there); host timings are not "
              f"reported as {target.name} latencies")
    if for_search:
        from edgekit.latency.predictor import find_predictor

        predictor = find_predictor(target.name)
        if predictor is not None:
            return LatencySource("predicted", reason=f"predicted from the {target.name} profile",
                                 predictor=predictor)
    return LatencySource("none", reason=reason)
