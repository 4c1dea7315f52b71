"""Work whose memory must not stay: a converter run in a forked child process that exits.

A converter keeps memory after it returns (measured on Caffe2's alexnet: LiteRT's converter holds 0.56 GB after its
first conversion, ExecuTorch's export and lowering more), so a run that converts in its own process grows with each
stage until the weight-heavy models pass 4 GB (docs/importing.md). `call(what, fn, ...)` runs `fn` in a child forked
from this process: the child sees the model and the data as they are (copy-on-write, nothing is pickled on the way in),
writes its files, sends back a small result (pickled through a pipe) and exits, taking the converter's memory with
it. A child that dies (a segfault inside a converter, the kernel's out-of-memory killer) becomes an `EdgekitError`
naming the work: one format failing stays a line in the report.

The child runs torch on one intra-op thread: GNU OpenMP's thread pool does not survive a fork (a child that runs a
parallel torch op after its parent did waits forever on threads that do not exist). Converters are graph work, not
arithmetic, so one thread costs them little. JAX's threads do not survive a fork either (LiteRT's converter lowers
through JAX, and a child converting after its parent did hangs in the lowering; JAX warns of it): once JAX has started
in this process (a joint search converts in-process), `fn` runs here. So it does where there is no fork (Windows),
and with `EDGEKIT_IN_PROCESS=1`. Callers send only work on big weights (`for_size`): a child starts its converter
cold.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from edgekit.errors import EdgekitError

T = TypeVar("T")
_finished: list[dict[str, Any]] = []  # one record per child since the last drain(): work, peak memory, seconds


def drain() -> dict[str, Any] | None:
    """What the children since the last call needed, for a stage's record: how many, their seconds, and the largest
    one's work and peak resident memory (its own, shared pages included: what `/usr/bin/time` counts). None if
    there were none."""
    done = list(_finished)
    _finished.clear()
    if not done:
        return None
    largest = max(done, key=lambda d: d["peak_rss_mb"])
    return {"count": len(done), "seconds": round(sum(d["seconds"] for d in done), 1),
            "peak_rss_mb": largest["peak_rss_mb"], "largest": largest["work"]}


CHILD_ABOVE_MB = 64.0  # weights below this convert in-process: a child starts its converter cold (LiteRT: ~8 s
# for the digits CNN against ~3 s warm), which only pays where the converter's memory matters


def model_bytes(model: Any) -> int:
    """The bytes of a torch module's parameters and buffers (duck-typed: nothing here imports torch)."""
    tensors = [*model.parameters(), *model.buffers()] if hasattr(model, "parameters") else []
    return sum(t.numel() * t.element_size() for t in tensors)


def for_size(nbytes: int) -> Callable[..., Any]:
    """`call` for work on weights of `nbytes` at or above `CHILD_ABOVE_MB` (`EDGEKIT_CHILD_ABOVE_MB` overrides it;
    0: always), else the same work in this process. Either is used as `for_size(n)(what, fn, *args, **kwargs)`."""
    above = float(os.environ.get("EDGEKIT_CHILD_ABOVE_MB", CHILD_ABOVE_MB))
    return call if nbytes >= above * 2**20 else _here


def for_model(model: Any) -> Callable[..., Any]:
    """`for_size` of a torch module's weights."""
    return for_size(model_bytes(model))


def _here(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


def enabled() -> bool:
    """Whether `call` forks: there is a fork, it is not turned off, and no thread pool that a fork breaks is up."""
    if not hasattr(os, "fork") or os.environ.get("EDGEKIT_IN_PROCESS", "") in ("1", "true", "yes"):
        return False
    jax_backends = getattr(sys.modules.get("jax._src.xla_bridge"), "_backends", None)
    return not jax_backends


def call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a forked child; its result or its exception as if it had run here. `what` names the
    work in the error when the child dies without an answer."""
    if not enabled():
        return fn(*args, **kwargs)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _run_child(write_fd, fn, args, kwargs)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()  # read to the end before waiting: a large answer would fill the pipe
    _, status, usage = os.wait4(pid, 0)
    _finished.append({"work": what, "peak_rss_mb": round(usage.ru_maxrss / 1024),
                      "seconds": round(time.perf_counter() - start, 1)})
    if not data:
        raise EdgekitError(f"{what} died in its child process ({_how(status)})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise value
    return value


def _run_child(write_fd: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C stops the child at once; the parent reports it
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        try:
            answer: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
            answer = ("error", e)
        try:
            data = pickle.dumps(answer)
            pickle.loads(data)  # an exception that pickles but cannot be rebuilt would fail in the parent
        except Exception:  # noqa: BLE001
            e = answer[1]
            data = pickle.dumps(("error", EdgekitError(f"{type(e).__name__}: {e}")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
    except BaseException:  # noqa: BLE001 - nothing may escape the child into the parent's code
        code = 1
    finally:
        os._exit(code)


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = ": out of memory?" if sig == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {os.WEXITSTATUS(status)}"
