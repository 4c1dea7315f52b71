"""This process's memory: how much is resident, its peak, and handing freed memory back to the system.

glibc's malloc may keep freed blocks in the process's heap instead of returning them; `trim()` after a release
(a stage, a search candidate, a verified artifact) hands the free heap back (malloc_trim); elsewhere than glibc it
only collects garbage. Measured on the survey's big files it changes little: their memory is live (imports, weight
copies, runtimes' buffers; docs/importing.md), not freed blocks held back. It is kept because it costs next to
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from functools import cache
from pathlib import Path


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim(collect: bool = True) -> None:
    """Returns the heap's free pages to the system, after collecting garbage (`collect`: a full collection takes
    a fraction of a second once torch is loaded; a search's per-candidate trim skips it)."""
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_mb() -> float:
    """This process's resident memory now, in MB (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> int:
    """The peak resident memory so far of this process or of its largest finished child (edgekit.child's converters,
    harness subprocesses), whichever is larger, in MB: what `/usr/bin/time -v` reports for the run. Linux reports
    ru_maxrss in kB."""
    import resource

    return round(max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
                 / 1024)
