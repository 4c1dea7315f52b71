"""TVM runtime: a `*.tvm.so` from the tvm export, run by relax.VirtualMachine on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgekit.errors import InputError, RuntimeUnavailable


class TvmRunner:
    def __init__(self, path: Path, threads: int) -> None:
        # TVM's thread pool reads this when it starts; the kernels themselves are single-threaded.
        os.environ.setdefault("TVM_NUM_THREADS", str(max(1, threads)))
        try:
            import tvm
            from tvm import relax
        except ImportError as e:
            raise RuntimeUnavailable(f"runtime tvm needs apache-tvm (make install): {e}") from None
        from edgekit import sidecars

        meta_path = sidecars.tvm(path)
        if not Path(path).is_file() or not meta_path.is_file():
            raise InputError(f"{path} is not a TVM artifact of edgekit (needs {meta_path.name} beside it)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("arch", "host") != "host" and self.meta["arch"] != os.uname().machine:
            raise RuntimeUnavailable(
                f"{Path(path).name} is built for {self.meta['arch']}; this machine is "
                f"{os.uname().machine} (run it on the device)"
            )
        try:
            self.lib = tvm.runtime.load_module(str(path))
            self.vm = relax.VirtualMachine(self.lib, tvm.cpu())
        except Exception as e:
            raise InputError(f"TVM cannot load {path}: {str(e).strip().splitlines()[-1][:200]}") from None
        self._tvm = tvm
        self._main = self.vm["main"]
        self.input_shape = tuple(self.meta["input_shape"])
        self.runtime = f"tvm {tvm.__version__} (relax vm + edgekit kernels)"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != self.input_shape:
            raise InputError(f"TVM artifact expects input {self.input_shape}, got {x.shape}")
        out = self._main(self._tvm.runtime.tensor(x))
        return _flat(out)


def _flat(out: object) -> list[np.ndarray]:
    """The frontend returns a tensor or (nested) tuples of them."""
    if hasattr(out, "numpy"):
        return [out.numpy()]
    return [a for o in out for a in _flat(o)]


def profile(runner: TvmRunner, x: np.ndarray, runs: int = 20) -> dict[str, dict[str, float]]:
    """Where a run's time goes: {called function: {"ms": mean per run, "calls": per run}}, slowest first.

    Uses the VM's instrument hook (times every packed call: the kernels, TVM's compiled ops, VM builtins).
    """
    import time
    from collections import Counter, defaultdict

    total: dict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    started: dict[str, float] = {}

    def instrument(func, name, before, ret, *args):  # noqa: ANN001
        if before:
            started[name] = time.perf_counter()
        else:
            total[name] += time.perf_counter() - started.pop(name, time.perf_counter())
            calls[name] += 1
        return 0

    runner(x)
    runner.vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            runner(x)
    finally:
        runner.vm.set_instrument(lambda *a: 0)
    return {
        k: {"ms": round(v / runs * 1e3, 4), "calls": calls[k] // runs}
        for k, v in sorted(total.items(), key=lambda kv: -kv[1])
    }


def load(path: Path, threads: int) -> TvmRunner:
    return TvmRunner(path, threads)
