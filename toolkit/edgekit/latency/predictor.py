"""Latency predictor built from measured profiles: a per-kernel lookup table with a fitted correction (nn-Meter style).

How a prediction is made for an artifact, a runtime and a thread count:

1. Kernel detection. The runtime's own graph compiler decides which kernels an artifact becomes (ONNX Runtime fuses
   Conv+Relu, QDQ pairs into QLinearConv, inserts layout reorders), so the kernel list is taken from ONNX Runtime on
   this machine: one untimed profiled run records every kernel's type and tensor shapes; its durations are discarded.
2. Lookup. Each kernel's key (type, activation shapes and dtypes, weight shape) is looked up in a table built from the
   profiles' per-operator timings. Per-operator times of one measurement are first scaled so they add up to that
   measurement's end-to-end p50, so the table is in p50 milliseconds.
3. Fallback. A kernel never seen is estimated by a per-type linear model (non-negative least squares on element
   counts and multiply-accumulates) fitted on the table.
4. Correction. The sum over kernels is mapped to p50 by a line fitted across the profile's measured entries.

Every prediction is labelled `"source": "predicted"` and carries the predictor's error: the median absolute error
of the last `edgekit profile --validate` run stored in the profile (basis "validation"), or else the in-sample fit
error (basis "fit"). Artifacts whose runtime has no per-operator profile (TFLite's Python interpreter offers none) are
predicted only when the very same file (sha256) was measured.
"""

from __future__ import annotations

import re
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.fileio import sha256_file
from edgekit.latency.profile import list_profiles, load_profile_file
from edgekit.report import Latency

_SHAPE_RE = re.compile(r"([a-z0-9]+)\[([0-9, ]*)\]")


def parse_signature(sig: str) -> tuple[str, list[tuple[str, tuple[int, ...]]], list[tuple[str, tuple[int, ...]]]]:
    """'Conv|float[1, 3, 8, 8],float[4, 3, 3, 3]->float[1, 4, 8, 8]' -> (type, inputs, outputs)."""
    op, _, rest = sig.partition("|")
    ins, _, outs = rest.partition("->")

    def tensors(text: str) -> list[tuple[str, tuple[int, ...]]]:
        return [(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d.strip()))
                for m in _SHAPE_RE.finditer(text)]

    return op, tensors(ins), tensors(outs)


def kernel_key(sig: str) -> str:
    """The lookup key: drops scale / zero-point / bias tensors (rank < 2), keeps activations and weights."""
    op, ins, outs = parse_signature(sig)
    keep = lambda ts: ",".join(f"{d}{list(s)}" for d, s in ts if len(s) >= 2)  # noqa: E731
    return f"{op}|{keep(ins)}->{keep(outs)}"


def kernel_features(sig: str) -> np.ndarray:
    """[1, input elements, output elements, multiply-accumulates (convolutions / matmuls with a known weight)]."""
    op, ins, outs = parse_signature(sig)
    big = [s for _, s in ins if len(s) >= 2]
    in_n = float(sum(int(np.prod(s)) for s in big))
    out_n = float(sum(int(np.prod(s)) for _, s in outs))
    macs = 0.0
    if len(big) >= 2 and len(big[1]) == 4 and outs:  # NCHW conv with its weight [M, C/g, kh, kw]
        macs = out_n * float(np.prod(big[1][1:]))
    elif len(big) >= 2 and len(big[1]) == 2 and outs:  # Gemm / MatMul [K, N]
        macs = out_n * float(big[1][0])
    elif op.startswith("QLinearConv") and big and outs:  # weights are pre-packed: assume a 1x1 over all channels
        macs = out_n * float(big[0][-1])
    return np.array([1.0, in_n, out_n, macs])


def onnx_kernels(path: str | Path, threads: int) -> list[dict[str, Any]]:
    """The kernels ONNX Runtime on this machine makes of an ONNX file (one untimed profiled run)."""
    from edgekit.runtimes._portable import load_onnxruntime

    with tempfile.TemporaryDirectory(prefix="edgekit-kernels-") as d:
        _, _, per_op = load_onnxruntime(str(path), threads, d)
        return per_op(0, 1)


def executorch_kernels(path: str | Path, threads: int) -> list[dict[str, Any]]:
    """The operators ExecuTorch's XNNPACK delegate runs for a `.pte` on this machine (one untimed ETDump run; the
    operator list and shapes are the same on every CPU, the kernels behind them are not)."""
    from edgekit.runtimes.executorch import per_op_profile

    return per_op_profile(Path(path), None, threads, runs=1, warmup=0)["per_op"]


# Runtimes whose kernels can be listed without a device: runtime name -> kernel detection.
KERNEL_DETECTORS = {"onnxruntime": onnx_kernels, "executorch": executorch_kernels}


@dataclass
class RuntimeModel:
    """Lookup table + fallback + correction for one runtime (name and version) and thread count."""

    table: dict[str, float]
    fallback: dict[str, np.ndarray]
    pooled: np.ndarray
    a: float = 1.0
    b: float = 0.0
    fit_err_pct: float = 0.0
    entries: int = 0

    def kernel_ms(self, sig: str) -> tuple[float, bool]:
        key = kernel_key(sig)
        if key in self.table:
            return self.table[key], True
        coef = self.fallback.get(parse_signature(sig)[0], self.pooled)
        return max(float(kernel_features(sig) @ coef), 0.0), False

    def raw_sum(self, sigs: list[str]) -> tuple[float, float]:
        """Sum of kernel estimates and the fraction of kernels found in the table."""
        parts = [self.kernel_ms(s) for s in sigs]
        return sum(p for p, _ in parts), (sum(hit for _, hit in parts) / len(parts) if parts else 0.0)


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns differ by 10^6: scale for a stable solve
    coef, _ = nnls(x / scale, y)
    return coef / scale


def fit_runtime_model(entries: list[dict[str, Any]]) -> RuntimeModel | None:
    """Builds the table from entries with per-operator signatures; None when there are none."""
    samples: dict[str, list[float]] = defaultdict(list)
    sig_of: dict[str, str] = {}
    usable = []
    for e in entries:
        ops = [o for o in e.get("per_op", []) if o.get("signature") and o["ms"] >= 0]
        total = sum(o["ms"] for o in ops)
        if not ops or total <= 0:
            continue
        scale = float(e["timing"]["p50_ms"]) / total
        for o in ops:
            key = kernel_key(o["signature"])
            samples[key].append(o["ms"] * scale)
            sig_of.setdefault(key, o["signature"])
        usable.append(e)
    if not usable:
        return None
    table = {k: float(statistics.median(v)) for k, v in samples.items()}
    by_type: dict[str, list[str]] = defaultdict(list)
    for k in table:
        by_type[k.partition("|")[0]].append(k)
    xs = np.array([kernel_features(sig_of[k]) for k in table])
    ys = np.array(list(table.values()))
    pooled = _nnls(xs, ys)
    fallback = {}
    for op, keys in by_type.items():
        if len(keys) >= 3:
            fallback[op] = _nnls(np.array([kernel_features(sig_of[k]) for k in keys]), np.array([table[k] for k in keys]))
    model = RuntimeModel(table, fallback, pooled, entries=len(usable))
    sums = np.array([model.raw_sum([o["signature"] for o in e["per_op"] if o.get("signature")])[0] for e in usable])
    p50 = np.array([float(e["timing"]["p50_ms"]) for e in usable])
    if len(usable) >= 3 and np.ptp(sums) > 0:
        model.a, model.b = (float(v) for v in np.polyfit(sums, p50, 1))
    else:
        model.a = float(np.median(p50 / sums))
    pred = model.a * sums + model.b
    model.fit_err_pct = float(np.median(np.abs(pred - p50) / p50) * 100)
    return model


@dataclass
class Predictor:
    """Predicts p50 latency on one target's device from its measured profiles."""

    target: str
    device: dict[str, Any]
    device_id: str
    profile_paths: list[Path]
    entries: list[dict[str, Any]]
    validation: dict[str, Any] | None = None
    _models: dict[tuple[str, int], RuntimeModel | None] = field(default_factory=dict)

    def _model(self, runtime: str, threads: int) -> RuntimeModel | None:
        key = (runtime, threads)
        if key not in self._models:
            chosen = [e for e in self.entries if _runtime_name(e["runtime"]) == runtime and e["threads"] == threads]
            self._models[key] = fit_runtime_model(chosen)
        return self._models[key]

    def can_predict(self, artifact_path: str | Path, runtime: str, threads: int = 1) -> bool:
        """Whether `predict` has something to go on (per-operator profile, or this very file measured)."""
        if self.can_predict_ops(runtime, threads):
            return True
        digest = sha256_file(artifact_path)
        return any(e.get("sha256") == digest and _runtime_name(e["runtime"]) == runtime and e["threads"] == threads
                   for e in self.entries)

    def predict(self, artifact_path: str | Path, runtime: str, threads: int = 1) -> Latency:
        """Predicted p50 of `artifact_path` run by `runtime` ("onnxruntime", "litert") with `threads` threads.

        Returns:
            a predicted Latency (p50_ms, error_pct, error_basis, device, device_id, profile; extra: kernels,
            kernels_in_table).
        Raises:
            EdgekitError: when the profiles hold nothing this artifact can be predicted from.
        """
        from edgekit.errors import EdgekitError

        path = Path(artifact_path)
        base = {"source": "predicted", "device": self.device_label, "device_id": self.device_id,
                "runtime": runtime, "threads": threads, "profile": [str(p) for p in self.profile_paths]}

        def latency(p50: float, err: float, basis: str, **extra: Any) -> Latency:
            return Latency(**base, p50_ms=p50, error_pct=err, error_basis=basis, extra=extra)

        digest = sha256_file(path)
        same = [e for e in self.entries if e.get("sha256") == digest and _runtime_name(e["runtime"]) == runtime
                and e["threads"] == threads]
        model = self._model(runtime, threads) if runtime in KERNEL_DETECTORS else None
        if model is not None:
            sigs = [k["signature"] for k in KERNEL_DETECTORS[runtime](path, threads)]
            raw, hit = model.raw_sum(sigs)
            p50 = model.a * raw + model.b
            err, basis = self._error(model)
            return latency(round(max(p50, 0.0), 4), err, basis, kernels=len(sigs), kernels_in_table=round(hit, 3))
        if same:
            return latency(float(statistics.median(e["timing"]["p50_ms"] for e in same)), 0.0,
                           "same file measured (lookup)")
        raise EdgekitError(f"the {self.target} profiles hold no per-operator timings for {runtime} at {threads} "
                           f"thread(s) nor a measurement of {path.name}: run `edgekit profile` on the device first")

    def can_predict_ops(self, runtime: str, threads: int = 1) -> bool:
        """Whether kernels of `runtime` can be listed here and the profiles hold per-operator times for them."""
        return runtime in KERNEL_DETECTORS and self._model(runtime, threads) is not None

    def check_layers(self, artifact_path: str | Path, runtime: str, threads: int, measured: list[dict[str, Any]],
                     p50_ms: float | None = None) -> dict[str, Any]:
        """Per-layer check: each measured operator's predicted time against its measured time, summed per layer.

        An operator's prediction is its kernel estimate (table or per-type model) times the model-level correction
        (predicted p50 / kernel sum), so the layers add up to the predicted p50 as the whole-model figure does.

        Measured operator times are first scaled so they add up to the artifact's measured p50 (as the table's
        entries were when the profile was built).

        Args:
            artifact_path: the profiled artifact.
            runtime: its runtime ("executorch").
            threads: runtime threads.
            measured: its per-operator rows ({"ms", "signature", "layer", "type"}) from the profile.
            p50_ms: its measured end-to-end p50 (None: operator times as profiled).
        """
        from edgekit.errors import EdgekitError
        from edgekit.latency.op_profile import by_layer

        model = self._model(runtime, threads)
        if model is None:
            raise EdgekitError(f"no per-operator profile for {runtime} at {threads} thread(s)")
        raw_sum = sum(o["ms"] for o in measured) or 1.0
        scale = p50_ms / raw_sum if p50_ms else 1.0
        measured = [{**o, "ms": o["ms"] * scale} for o in measured]
        kernel = [model.kernel_ms(o.get("signature") or f"{o['type']}|")[0] for o in measured]
        raw = sum(kernel)
        whole = self.predict(artifact_path, runtime, threads)["p50_ms"]
        correction = (model.a * raw + model.b) / raw if raw > 0 else 1.0
        pred_ops = [{**o, "ms": k * correction} for o, k in zip(measured, kernel, strict=True)]
        meas, pred = by_layer(measured), {r["layer"]: r for r in by_layer(pred_ops)}
        total_meas = sum(r["ms"] for r in meas) or 1.0
        rows, errs = [], []
        for r in meas:
            p = pred[r["layer"]]["ms"]
            err = 100.0 * (p - r["ms"]) / r["ms"] if r["ms"] > 0 else None
            rows.append({"layer": r["layer"], "measured_ms": r["ms"], "predicted_ms": round(p, 5), "err_pct": err})
            if err is not None and r["ms"] >= 0.01 * total_meas:  # layers under 1% of the run: noise, not signal
                errs.append(abs(err))
        base_err, basis = self._error(model)
        return {"device": self.device_label, "basis": f"{basis}; model error {base_err}%",
                "layers": rows, "layers_compared": len(errs),
                "median_abs_err_pct": round(float(np.median(errs)), 1) if errs else None,
                "weighted_abs_err_pct": round(100.0 * sum(abs(pred[r["layer"]]["ms"] - r["ms"]) for r in meas)
                                              / total_meas, 1),
                "predicted_p50_ms": whole, "measured_p50_ms": p50_ms,
                "model_err_pct": round(100.0 * (whole - p50_ms) / p50_ms, 1) if p50_ms else None}

    def _error(self, model: RuntimeModel) -> tuple[float, str]:
        v = self.validation
        if v and v.get("median_abs_err_pct") is not None:
            return float(v["median_abs_err_pct"]), (f"validation: {v.get('variants')} variants, "
                                                     f"{v.get('within_10pct_fraction')} within 10% ({v.get('date')})")
        return round(model.fit_err_pct, 2), f"fit: in-sample over {model.entries} measured entries"

    @property
    def device_label(self) -> str:
        d = self.device
        return f"{d.get('hostname')}: {d.get('model') or d.get('cpu')} ({d.get('cores')} cores, {d.get('arch')})"


def _runtime_name(runtime: str) -> str:
    """'onnxruntime 1.32.0' -> 'onnxruntime'; 'litert 2.3.0 (xnnpack)' -> 'litert'."""
    return runtime.split()[0] if runtime else ""


def predictor_from_profiles(paths: list[Path]) -> Predictor | None:
    """A predictor over the given profile files of ONE device (entries of all files are pooled)."""
    return predictor_from_profile_dicts([load_profile_file(p) for p in paths], list(paths)) if paths else None


def predictor_from_profile_dicts(profiles: list[dict[str, Any]], paths: list[Path] | None = None) -> Predictor | None:
    """A predictor over already-loaded profiles of ONE device."""
    entries = [e for p in profiles for e in p["entries"]]
    if not entries:
        return None
    newest = max(profiles, key=lambda p: p.get("updated", ""))
    validation = next((p["validation"] for p in profiles if p.get("validation")), None)
    return Predictor(newest["target"], newest.get("device", {}), newest["device_id"], list(paths or []), entries,
                     validation)


def load_predictor(target_name: str, device_id: str | None = None, root: Path | None = None) -> Predictor | None:
    """The predictor for a target from profiles/<target>/, or None when no profile exists.

    Args:
        target_name: target name ("rpi4", "host", ...).
        device_id: which device's profile (default: the one with the most entries).
        root: the profiles folder (default: <project root>/profiles).
    """
    paths = list_profiles(target_name, root)
    if device_id:
        paths = [p for p in paths if p.stem == device_id]
    if not paths:
        return None
    best = max(paths, key=lambda p: len(load_profile_file(p)["entries"]))
    return predictor_from_profiles([best])


def find_predictor(target_name: str) -> Predictor | None:
    """The target's predictor for a search, or None: a broken or missing profile means no prediction, never a host
    figure."""
    try:
        return load_predictor(target_name)
    except Exception:
        return None
