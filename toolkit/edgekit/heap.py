"""Handing freed memory back to the system.

glibc's malloc keeps freed blocks in the process's heap, and after a large block is freed it raises its mmap threshold
(up to 32 MB), so the buffers of the next runtime loaded land in the heap too. A run that loads and releases many
runtimes (the candidates of a search, the artifacts verified and timed one after another) then holds, resident, the
high-water mark of everything it ever loaded. `trim()` after a release hands the free heap back (malloc_trim);
elsewhere than glibc it only collects garbage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


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
