"""ExecuTorch runtime (the executorch pip wheel's pybindings, XNNPACK delegate registered): runs `.pte` programs.

Threads: ExecuTorch has one process-wide thread pool (XNNPACK's); `load(path, threads)` resets it to `threads` when it
differs, so every ExecuTorch runner in a process runs with the thread count of the last one loaded.

Per-operator times come from ETDump: the wheel is built with the event tracer, and the XNNPACK delegate logs one
event per XNNPACK operator (its own profiler's microsecond timings) inside each DELEGATE_CALL. `etdump_profile`
records them; `per_op_from_etdump` turns an ETDump (also one made on a device by the harness) into per-operator rows
mapped onto the exported program's layers (edgekit.export.pte records the delegated operators in order).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import sidecars
from edgekit.errors import InputError, RuntimeUnavailable, first_line
from edgekit.runtimes._exir import quiet_imports


class NativeLog:
    """What the runtime printed on fd 2 while a block ran (ExecuTorch logs loading errors there, not in exceptions)."""

    text: str = ""

    def last(self) -> str:
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip() and "cpuinfo" not in ln]
        return lines[-1] if lines else ""


@contextlib.contextmanager
def native_log() -> Iterator[NativeLog]:
    """Captures fd 2 (ExecuTorch's C++ log) into a NativeLog; the CLI's screen stays clean."""
    log = NativeLog()
    if os.environ.get("EDGEKIT_VERBOSE"):
        yield log
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            log.text = f.read().decode(errors="replace")


def _pybindings() -> Any:
    quiet_imports()
    try:
        import torch  # noqa: F401  (the pybindings resolve libtorch's symbols: torch first)
        from executorch.extension.pybindings import portable_lib
    except ImportError as e:
        raise RuntimeUnavailable(f"the ExecuTorch runtime is missing ({e}); install executorch==1.5.1") from None
    return portable_lib


def version() -> str:
    from importlib.metadata import version as pkg_version

    return pkg_version("executorch").split("+")[0]


def set_threads(threads: int) -> None:
    """Resets ExecuTorch's process-wide thread pool to `threads` (only when it differs: a reset logs a line)."""
    pl = _pybindings()
    with native_log():
        if pl._threadpool_get_thread_count() != threads:
            pl._unsafe_reset_threadpool(int(threads))


def check_file(path: Path) -> None:
    """Refuses files that are not ExecuTorch programs before the runtime sees them: on a foreign file the runtime
    aborts the process (it logs the bad identifier as a string and terminates on non-UTF-8 bytes)."""
    from edgekit.runtimes._portable import pte_problem

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such ExecuTorch program: {path}")
    problem = pte_problem(str(path))
    if problem:
        raise InputError(f"{path} {problem}")


class ExecuTorchRunner:
    """One loaded `.pte` program's forward method.

    Args:
        path: the program.
        threads: thread-pool size (process-wide, see the module docstring).
        etdump: record an ETDump (per-operator events) on every run.
    """

    def __init__(self, path: Path, threads: int, etdump: bool = False) -> None:
        import torch

        check_file(path)
        _pybindings()
        from executorch.runtime import Runtime, Verification

        set_threads(threads)
        self._torch = torch
        error = None
        with native_log() as log:
            try:
                self.program = Runtime.get().load_program(Path(path), verification=Verification.InternalConsistency,
                                                          enable_etdump=etdump)
                self.method = self.program.load_method("forward")
                meta = self.method.metadata
                self.input_shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())
                self.num_inputs = meta.num_inputs()
            except Exception as e:
                error = first_line(e, 200)
        if error is not None:  # raised after the log is read: the runtime's reason is in it
            raise InputError(f"ExecuTorch cannot load {path}: {log.last() or error}")
        self.runtime = f"executorch {version()} (xnnpack)"
        # A program exported with dynamic dimensions holds their upper bounds; the sidecar says which they are.
        side = sidecars.read(sidecars.pte(path)) or {}
        first = ((side.get("signature") or {}).get("inputs") or [{}])[0]
        dynamic = set(first.get("dynamic") or ())
        self.dynamic = bool(dynamic)
        self.input_names = [t["name"] for t in (side.get("signature") or {}).get("inputs", [])]
        self.output_names = [t["name"] for t in (side.get("signature") or {}).get("outputs", [])]
        self.batch = None if 0 in dynamic else (self.input_shape[0] if self.input_shape else 1)
        self.input_shape = tuple(1 if i in dynamic else d for i, d in enumerate(self.input_shape))

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of the program (a debug build has extra ones)."""
        feeds = [x[n] for n in self.input_names] if isinstance(x, dict) else [x]
        tensors = []
        for f in feeds:
            f = np.ascontiguousarray(f, np.float32) if np.asarray(f).dtype.kind == "f" else np.ascontiguousarray(f)
            if not self.dynamic and len(feeds) == 1 and tuple(f.shape) != self.input_shape:
                raise InputError(f"ExecuTorch program expects input {self.input_shape}, got {tuple(f.shape)}")
            tensors.append(self._torch.from_numpy(f))
        return [o.numpy() for o in self.method.execute(tensors)]

    def write_etdump(self, path: Path) -> None:
        """Writes the ETDump recorded so far (needs etdump=True)."""
        with native_log(), tempfile.TemporaryDirectory(prefix="edgekit-etdump-") as d:
            self.program.write_etdump_result_to_file(str(path), str(Path(d) / "debug.bin"))


def load(path: Path, threads: int) -> ExecuTorchRunner:
    return ExecuTorchRunner(path, threads)


def etdump_profile(path: Path, x: np.ndarray | None, threads: int = 1, runs: int = 10, warmup: int = 3) -> bytes:
    """Runs the program `warmup + runs` times with ETDump on and returns the ETDump (all runs; skip `warmup`).

    `x` None feeds zeros (kernel detection: which operators run, not how long).
    """
    runner = ExecuTorchRunner(Path(path), threads, etdump=True)
    # the shape it was exported at (a dynamic program's own input_shape has its dynamic dims at 1)
    shape = tuple((sidecars.read(sidecars.pte(path)) or {}).get("input_shape") or runner.input_shape)
    if x is None:
        x = np.zeros(shape, np.float32)
    else:
        x = np.asarray(x, np.float32)
        x = x if runner.dynamic else x.reshape(runner.input_shape)
    for _ in range(warmup + runs):
        runner(x)
    with tempfile.TemporaryDirectory(prefix="edgekit-etdump-") as d:
        out = Path(d) / "run.etdp"
        runner.write_etdump(out)
        return out.read_bytes()


def per_op_from_etdump(etdump: bytes, skip_runs: int = 0, ops: list[dict[str, Any]] | None = None
                       ) -> dict[str, Any]:
    """Per-operator mean times from an ETDump, mapped onto the program's layers.

    Args:
        etdump: the ETDump bytes (etdump_profile, or the harness's `etdump_b64`).
        skip_runs: leading runs to leave out (warm-up: XNNPACK packs weights on the first run).
        ops: the program's operators in execution order (the `ops` of the export's sidecar); None: names only.

    Returns:
        {"per_op": [{"name", "type", "ms" (median per run), "layer", "op", "signature"}], "runs", "execute_ms" (median of
        Method::execute), "mapped" (whether operators were matched to layers), "note"}.
    """
    from edgekit.runtimes._etdump import map_events, read_events

    events, execute = read_events(etdump, skip_runs)
    rows, mapped, note = map_events(events, ops)
    runs = len(execute)
    return {"per_op": rows, "runs": runs, "execute_ms": round(float(np.median(execute)), 5) if runs else None,
            "mapped": mapped, "note": note}


PROFILE_SOURCE = ("ETDump (ExecuTorch event tracer): the XNNPACK delegate's own operator timings, 1 us resolution, "
                  "median per run over separate profiled runs")


def per_op_profile(path: Path, x: np.ndarray | None, threads: int = 1, runs: int = 20, warmup: int = 3
                   ) -> dict[str, Any]:
    """Per-operator times of a `.pte` on this machine, mapped onto its layers (the export's sidecar)."""
    etdump = etdump_profile(path, x, threads, runs, warmup)
    prof = per_op_from_etdump(etdump, warmup, (sidecars.read(sidecars.pte(path)) or {}).get("ops"))
    prof["source"] = PROFILE_SOURCE
    return prof


def per_op_from_harness(result: dict[str, Any], artifact: Path) -> dict[str, Any]:
    """Decodes the raw ETDump a device harness returned (`etdump_b64`) with the host's artifact sidecar."""
    import base64

    etdump = base64.b64decode(result.pop("etdump_b64"))
    ops = (sidecars.read(sidecars.pte(artifact)) or {}).get("ops")
    prof = per_op_from_etdump(etdump, int(result.pop("etdump_skip_runs", 0)), ops)
    prof["source"] = PROFILE_SOURCE + " (recorded on the device, decoded here)"
    return prof
