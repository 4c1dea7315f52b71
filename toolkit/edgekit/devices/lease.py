"""Device leases shared by every process of this machine: a slot of a farm device is one lock file, held with
flock(2) while a measurement runs there. Two search workers (two processes) never time on the same slot at once, and
a killed process releases its leases with its file descriptors (the kernel drops the lock)."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path


def default_lock_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekit" / "farm"


class Lease:
    """One held slot (release it, or use it as a context manager)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Leases:
    """Lock files for device slots under one folder.

    Args:
        folder: where the lock files live (one per device URI and slot; created when missing).
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder else default_lock_dir()
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, uri: str, slot: int) -> Path:
        # The display URI names the device (options such as key paths do not change which board it is).
        digest = hashlib.sha256(uri.split("?", 1)[0].encode()).hexdigest()[:16]
        return self.folder / f"{digest}.{slot}.lock"

    def try_acquire(self, uri: str, slot: int) -> Lease | None:
        """The slot's lease, or None when another process (or thread) holds it."""
        path = self.path(uri, slot)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return Lease(fd, path)

    def busy(self, uri: str, slots: int) -> int:
        """How many of the device's slots are held right now (for `edgekit farm status`)."""
        held = 0
        for slot in range(slots):
            lease = self.try_acquire(uri, slot)
            if lease is None:
                held += 1
            else:
                lease.release()
        return held
