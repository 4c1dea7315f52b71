"""TVM export: torch.export -> Relax, eligible convolutions -> edgekit's own kernels, the rest compiled by TVM.

The artifact is one shared library (`<name>.tvm.so`: the compiled Relax VM program with the kernels linked in) plus a
sidecar `<name>.tvm.json` (input shape, target, which layers run on which kernel, tuning). Running it needs only the
TVM runtime (libtvm_ffi + libtvm_runtime) on the device.

Tuning: MetaSchedule tunes what TVM compiles (everything but the kernels) within `tune_trials`; the tuning database
is kept per target under kernels/tuning/<target>/ and reused by later exports (also with `tune_trials=0`), so a
record checked in for a target makes a fresh export fast without tuning again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit import sidecars
from edgekit.errors import EdgekitError, RuntimeUnavailable, first_line
from edgekit.export._tvm_kernels import KernelPolicy, fold_batchnorm, rewrite
from edgekit.fileio import atomic_path, write_json

if TYPE_CHECKING:
    import torch.nn as nn

RUNTIME = "tvm"
SUFFIX = sidecars.TVM_SUFFIX
SIGNATURE_NOTE = "TVM compiles the model for one static input shape"
TARGET_AWARE = True  # the export stage passes the run's target (the library is compiled for its CPU)
TUNING_DIR = Path(__file__).resolve().parents[3] / "kernels" / "tuning"
# Edge targets by architecture: the LLVM target TVM compiles for, the kernel build, and the C compiler that links.
ARCHES = {
    "aarch64": (
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
        "aarch64",
        "aarch64-linux-gnu-gcc",
    ),
}


def sidecar(path: Path) -> Path:
    """The JSON that describes a TVM artifact (edgekit.sidecars)."""
    return sidecars.tvm(path)


def export(
    model: nn.Module,
    example: np.ndarray,
    path: Path,
    target: str | Any = "host",
    tune_trials: int = 0,
    policy: KernelPolicy | None = None,
    tuning_dir: Path | None = None,
) -> Path:
    """Compiles `model` at the example's shape into a TVM library with the kernels linked in.

    Args:
        model: torch model (eval mode; BatchNorm is folded into convolutions first).
        example: one input batch (N, C, H, W); N must be 1 for the kernels to apply.
        path: output library (`*.tvm.so`); the sidecar JSON goes beside it.
        target: a Target, or its name / arch: "host" (this machine) or an aarch64 target (rpi4, android-arm64).
        tune_trials: MetaSchedule trial budget for the TVM-compiled part (0: reuse the target's record, if any).
        policy: which layers go to the kernels (default: KernelPolicy()).
        tuning_dir: tuning database folder (default kernels/tuning/<target name>).
    """
    try:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.torch import from_exported_program
    except ImportError as e:
        raise RuntimeUnavailable(f"the tvm export needs apache-tvm (make install): {e}") from None
    import torch

    from edgekit import kernels

    policy = policy or KernelPolicy()
    tname, tvm_target, arch, cc = _resolve_target(target, tvm)
    model = fold_batchnorm(model)
    x = torch.as_tensor(np.ascontiguousarray(example, np.float32))
    try:
        with torch.no_grad():
            program = torch.export.export(model, (x,))
        mod = from_exported_program(program)
    except Exception as e:
        raise EdgekitError(f"TVM import failed: {first_line(e)}") from None
    mod = relax.transform.FoldConstant()(mod)
    mod, replaced = rewrite(mod, policy)
    tuning_dir = Path(tuning_dir) if tuning_dir else TUNING_DIR / tname
    t0 = time.perf_counter()
    ex, tuning = _compile(mod, tvm_target, tuning_dir, tune_trials)
    tuning["seconds"] = round(time.perf_counter() - t0, 2)
    objects = [str(o) for o in kernels.objects(arch)]
    with atomic_path(path) as tmp:
        lib_tmp = tmp.with_suffix(".so")  # export_library picks the linker by the suffix
        try:
            if cc:
                from tvm.support import cc as tvm_cc

                ex.export_library(str(lib_tmp), fcompile=tvm_cc.cross_compiler(cc), options=objects)
            else:
                ex.export_library(str(lib_tmp), options=objects)
        except Exception as e:
            raise EdgekitError(
                f"TVM export_library failed: {str(e).strip().splitlines()[-1][:300]}"
            ) from None
        lib_tmp.replace(tmp)
    write_json(
        sidecar(path),
        {
            "format": "tvm",
            "target": tname,
            "tvm_target": json.loads(json.dumps(_target_dict(tvm_target))),
            "arch": arch,
            "input_shape": list(x.shape),
            "kernels": replaced.layers,
            "kernel_counts": {k: replaced.count(k) for k in ("spmm", "dw3x3", "conv3x3", "dense")},
            "tuning": tuning,
            "tvm_version": tvm.__version__,
        },
    )
    return path


def _resolve_target(target: str | Any, tvm: Any) -> tuple[str, Any, str, str | None]:
    """(name, tvm Target, kernel arch, cross compiler or None)."""
    name, arch = (target, None) if isinstance(target, str) else (target.name, target.arch)
    if isinstance(target, str) and target != "host":
        from edgekit.targets import load_target

        arch = load_target(target).arch
    if name == "host" or arch in (None, "auto", os.uname().machine):
        cpu = tvm.target.codegen.llvm_get_system_cpu()
        return name, tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": 1}), "host", None
    if arch not in ARCHES:
        raise EdgekitError(f"tvm export: target {name} has arch {arch}; supported: host, {', '.join(ARCHES)}")
    spec, karch, cc = ARCHES[arch]
    if shutil.which(cc) is None:
        raise RuntimeUnavailable(f"tvm export for {name} needs the cross compiler {cc} (make system-deps)")
    return name, tvm.target.Target(spec), karch, cc


def _target_dict(t: Any) -> dict[str, Any]:
    try:
        return json.loads(str(t))
    except ValueError:
        return {"target": str(t)}


def _compile(mod: Any, target: Any, tuning_dir: Path, trials: int) -> tuple[Any, dict[str, Any]]:
    """Compiles with MetaSchedule: tune `trials` (into tuning_dir), then apply whatever the database holds."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    has_record = (tuning_dir / "database_tuning_record.json").is_file()
    info: dict[str, Any] = {"trials": trials, "record": str(tuning_dir), "used_record": False}
    if trials > 0:
        error = _tune_in_child(mod, target, tuning_dir, trials)
        if error:
            info["tuning_error"] = error
        has_record = (tuning_dir / "database_tuning_record.json").is_file()
    if has_record:
        db = ms.database.JSONDatabase(work_dir=str(tuning_dir), allow_missing=False)
        info["used_record"] = True
        return ms.relax_integration.compile_relax(db, mod, target, params={}), info
    return tvm.compile(mod, target), info


def _tune_in_child(mod: Any, target: Any, tuning_dir: Path, trials: int) -> str | None:
    """Runs MetaSchedule in a forked child: a crash inside TVM's tuner (apache-tvm 0.27.0.post1 segfaults in
    tvm::ffi::ToJSONGraph on this machine) must not take the export down. Returns an error text or None.

    The child tunes in a scratch folder seeded with the existing record; the parent merges the result atomically, so
    a killed tuning run never leaves a half-written record.
    """
    import multiprocessing as mp

    from tvm.s_tir import meta_schedule as ms

    files = ("database_workload.json", "database_tuning_record.json")
    with tempfile.TemporaryDirectory(prefix="edgekit-tune-") as work:
        for f in files:
            if (tuning_dir / f).is_file():
                shutil.copy(tuning_dir / f, Path(work) / f)

        def tune() -> None:
            ms.relax_integration.tune_relax(
                _fused(mod, target),
                {},
                target,
                work,
                max_trials_global=trials,
                num_trials_per_iter=min(64, trials),
                cost_model=_cost_model(),
                seed=0,
            )

        child = mp.get_context("fork").Process(target=tune, daemon=True)
        child.start()
        child.join()
        if child.exitcode != 0:
            return f"MetaSchedule tuning failed (exit code {child.exitcode}); compiled without tuning"
        tuning_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            if (Path(work) / f).is_file():
                with atomic_path(tuning_dir / f) as tmp:
                    shutil.copy(Path(work) / f, tmp)
    return None


def _fused(mod: Any, target: Any) -> Any:
    """The preparation compile_relax applies before it looks schedules up (so tuned workloads match its keys):
    legalize to TIR, then fuse."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline as rp

    try:
        dispatch = rp.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    seq = [
        *dispatch,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with target:
        return tvm.transform.Sequential(seq)(mod)


def _cost_model() -> str:
    try:
        import xgboost  # noqa: F401

        return "xgb"
    except ImportError:
        return (
            "random"  # xgboost is not a dependency; random search still finds the good schedules of small ops
        )
