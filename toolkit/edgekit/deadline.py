"""A hard time limit on Python work that has no timeout of its own (a library's graph pass that runs for minutes on a
big model): SIGALRM interrupts it between bytecodes and raises `OutOfTime`, a BaseException, so that no
`except Exception` on the way (a search that records a failed candidate and goes on) can swallow it.

    with time_limit(120, "ExecuTorch's INT8 search"):
        ...

Only on the main thread of a Unix process (elsewhere it limits nothing); an outer alarm that comes first (pytest-timeout)
is left alone, and a later one is restored afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


class OutOfTime(BaseException):  # noqa: N818 - it reads as what happened
    """The work inside `time_limit` was still running at its deadline."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    if (not seconds or seconds <= 0 or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_delay and outer_delay <= seconds:  # an outer deadline comes first: it decides
        yield
        return

    def _expired(signum: int, frame: object) -> None:
        raise OutOfTime(f"{what} was still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - start), 1e-3), outer_interval)
