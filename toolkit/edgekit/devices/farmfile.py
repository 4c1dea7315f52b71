"""devices.toml: the devices of a farm, read and checked in one place.

    [farm]                       # optional; these are the defaults
    timeout_s = 600              # one measurement on one device; past it, the device counts as failed
    retries = 2                  # other devices a failed measurement is tried on
    down_after = 1               # failures in a row that take a device out ...
    recheck_s = 300              # ... until this long has passed (a rebooted board comes back)
    lock_dir = ""                # leases shared by the processes of this machine (default ~/.cache/edgekit/farm)

    [[device]]
    name = "pi-1"                                      # [a-z0-9._-], unique
    uri = "ssh://pi@pi-1.local?identity=~/.ssh/farm"   # any device URI but a farm
    target = "rpi4"                                    # the target it is (edgekit targets)
    labels = ["shelf-a", "8gb"]                        # optional; `farm:devices.toml?labels=shelf-a` selects
    concurrency = 1                                    # measurements at once (1 for honest timings)
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, SettingsError

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_FARM_KEYS = {"timeout_s", "retries", "down_after", "recheck_s", "lock_dir"}
_DEVICE_KEYS = {"name", "uri", "target", "labels", "concurrency"}


@dataclass(frozen=True)
class FarmDevice:
    """One [[device]] entry."""

    name: str
    uri: str
    target: str
    labels: tuple[str, ...] = ()
    concurrency: int = 1

    @property
    def display(self) -> str:
        """The URI without options (key paths are local details)."""
        return self.uri.split("?", 1)[0]


@dataclass(frozen=True)
class FarmSpec:
    """A parsed devices.toml."""

    path: Path
    devices: tuple[FarmDevice, ...]
    timeout_s: int = 600
    retries: int = 2
    down_after: int = 1
    recheck_s: int = 300
    lock_dir: str = ""
    targets: tuple[str, ...] = field(default=())

    def select(self, target: str | None = None, labels: tuple[str, ...] = ()) -> list[FarmDevice]:
        return [d for d in self.devices if (target is None or d.target == target) and set(labels) <= set(d.labels)]


def load_farm(path: str | Path) -> FarmSpec:
    """Reads and checks devices.toml; every problem is one line naming the file and the entry."""
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise InputError(f"cannot read the farm file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path} is not valid TOML: {e}") from None
    unknown = set(raw) - {"farm", "device"}
    if unknown:
        raise SettingsError(f"{path}: unknown sections {sorted(unknown)}; a farm file has [farm] and [[device]]")
    farm = raw.get("farm", {})
    bad = set(farm) - _FARM_KEYS
    if bad:
        raise SettingsError(f"{path}: unknown [farm] keys {sorted(bad)}; allowed: {sorted(_FARM_KEYS)}")
    opts = {k: farm[k] for k in _FARM_KEYS if k in farm}
    for key in ("timeout_s", "retries", "down_after", "recheck_s"):
        if key in opts and (not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 0
                            or (key in ("timeout_s", "down_after") and opts[key] < 1)):
            raise SettingsError(f"{path}: [farm] {key} must be a whole number "
                                f"{'>= 1' if key in ('timeout_s', 'down_after') else '>= 0'}, got {opts[key]!r}")
    if "lock_dir" in opts and not isinstance(opts["lock_dir"], str):
        raise SettingsError(f"{path}: [farm] lock_dir must be a path")
    entries = raw.get("device", [])
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{path}: no [[device]] entries")
    devices = tuple(_device(path, i, e) for i, e in enumerate(entries))
    names = [d.name for d in devices]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SettingsError(f"{path}: device names must be unique, repeated: {dup}")
    return FarmSpec(path=path.resolve(), devices=devices, targets=tuple(sorted({d.target for d in devices})), **opts)


def _device(path: Path, i: int, e: Any) -> FarmDevice:
    from edgekit.devices import SCHEMES, scheme_of
    from edgekit.targets import load_target

    where = f"{path}: device {i + 1}"
    if not isinstance(e, dict):
        raise SettingsError(f"{where} is not a table")
    bad = set(e) - _DEVICE_KEYS
    if bad:
        raise SettingsError(f"{where}: unknown keys {sorted(bad)}; allowed: {sorted(_DEVICE_KEYS)}")
    for key in ("name", "uri", "target"):
        if not isinstance(e.get(key), str) or not e[key]:
            raise SettingsError(f"{where}: '{key}' is required (a string)")
    where = f"{path}: device '{e['name']}'"
    if not _NAME.match(e["name"]):
        raise SettingsError(f"{where}: the name must match {_NAME.pattern}")
    scheme = scheme_of(e["uri"])
    if scheme not in SCHEMES or scheme == "farm":
        raise SettingsError(f"{where}: uri must be a device URI (ssh://, adb://, local, node, chromium), got "
                            f"'{e['uri']}'")
    if scheme == "ssh":
        from edgekit.devices.uri import parse_device_uri

        parse_device_uri(e["uri"])  # one-line error for a malformed ssh URI, before anything connects
    load_target(e["target"])  # an unknown target is an error naming the closest ones
    labels = e.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise SettingsError(f"{where}: labels must be a list of strings")
    conc = e.get("concurrency", 1)
    if not isinstance(conc, int) or isinstance(conc, bool) or not 1 <= conc <= 16:
        raise SettingsError(f"{where}: concurrency must be a whole number from 1 to 16, got {conc!r}")
    return FarmDevice(e["name"], e["uri"], e["target"], tuple(labels), conc)
