"""`edgekit profile --validate`: predict, then measure, random INT8 policies of mobilenet_v2 on this machine.

Variants are real ONNX Runtime static-quantisation outputs (QDQ, per-channel weights) of torchvision mobilenet_v2 in
which a random subset of the convolutions (random fraction per variant) is left in float. Steps:

1. profile: the float model, the all-INT8 model and `train` random policies are measured (per-operator profiling
   on) and stored in profiles/host/<device-id>.json;
2. predict: a predictor built from those entries only predicts `variants` held-out random policies (other seeds);
3. compare with the held-out policies' measured p50.

Default (interleaved): the profile models and the held-out policies are timed in ONE interleaved session (one run of
each per round), so the load of a shared machine hits both alike; the held-out timings are never given to the
predictor. `sequential=True` keeps the literal order (profile, predict, then time the held-out policies in a later
session); the float and INT8 models are then timed again beside them and their drift against the profile says how much
the machine's load changed in between (the predictor cannot know that).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.latency.predictor import predictor_from_profile_dicts
from edgekit.latency.profile import add_entry, device_id_from_facts, new_profile, now_iso, save_profile


def export_mobilenet_v2(path: Path) -> Path:
    """torchvision mobilenet_v2 (seed-0 initialisation: no weights are downloaded) as float ONNX."""
    import torch
    import torchvision

    from edgekit.export import onnx as onnx_export

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    return onnx_export.export(model, x, path)


class _Calibration:
    """Synthetic calibration batches (shape-only: no data set can be downloaded)."""

    def __init__(self, name: str, shape: tuple[int, ...], n: int = 4) -> None:
        self.items = iter([{name: np.random.default_rng(i).standard_normal(shape).astype(np.float32)}
                           for i in range(n)])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def _time_here(paths: list[Path], threads: int, runs: int, warmup: int, profile_runs: int,
               profile_first: int = -1) -> list[dict[str, Any]]:
    """The harness results of timing `paths` interleaved on this machine (the `local` device, harness mode)."""
    from edgekit.devices import Job, open_device

    dev = open_device("local", harness=True)
    lats = dev.time([Job(p, "onnxruntime") for p in paths], runs, warmup=warmup, threads=threads,
                    profile_runs=profile_runs, profile_first=profile_first)
    return [lat.extra["raw"] for lat in lats]


def make_variants(float_onnx: Path, workdir: Path, seeds: list[int]
                  ) -> tuple[Path, Path, dict[int, Path], dict[int, float]]:
    """Pre-processes the float model, quantises it fully and once per seed with a random float-kept subset.

    Returns:
        (pre-processed float model, all-INT8 model, {seed: variant path}, {seed: fraction of layers in INT8}).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / "float.onnx"
    quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre)).graph
    inp = graph.input[0]
    shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
    layers = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    cache = workdir / "calibration.json"

    class Reader(_Calibration, CalibrationDataReader):
        pass

    def quantize(out: Path, exclude: list[str]) -> Path:
        quantize_static(str(pre), str(out), Reader(inp.name, shape), quant_format=QuantFormat.QDQ,
                        per_channel=True, nodes_to_exclude=exclude, calibration_cache_path=str(cache))
        return out

    int8 = quantize(workdir / "int8.onnx", [])
    variants, int8_share = {}, {}
    for seed in seeds:
        rng = random.Random(seed)
        kept_float = rng.sample(layers, round(rng.uniform(0.1, 0.9) * len(layers)))
        variants[seed] = quantize(workdir / f"policy_{seed}.onnx", kept_float)
        int8_share[seed] = 1 - len(kept_float) / len(layers)
    return pre, int8, variants, int8_share


def validate_host(variants: int = 20, train: int = 8, threads: int = 1, runs: int = 60, warmup: int = 5,
                  profile_runs: int = 10, model: Path | None = None, profiles_root: Path | None = None,
                  sequential: bool = False, log: Any = print) -> dict[str, Any]:
    """Runs the validation on this machine and returns the summary (also stored in the profile).

    Args:
        variants: fresh random policies predicted and measured (held out from the profile).
        train: random policies measured into the profile (besides the float and all-INT8 models).
        threads: ONNX Runtime threads.
        runs: timed runs per model.
        warmup: untimed runs per model.
        profile_runs: profiled runs per training model (per-operator timings).
        model: a float ONNX file (default: torchvision mobilenet_v2 exported here).
        profiles_root: profiles folder (default: <project root>/profiles).
        sequential: profile first, predict, then time the held-out policies in a later session (the float and
            INT8 models are timed again beside them, to show the machine's drift). Default: the profiled and the
            held-out models are timed in one interleaved session (so a shared machine's load changes hit both
            alike), then the predictor, built from the profiled entries only, predicts the held-out ones.
        log: progress messages (one string each).
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-validate-") as tmp:
        work = Path(tmp)
        source = str(model)
        if model is None:
            log("exporting torchvision mobilenet_v2 to ONNX")
            model = export_mobilenet_v2(work / "mobilenet_v2.onnx")
            source = "torchvision:mobilenet_v2 (seed-0 weights)"
        train_seeds = [1000 + i for i in range(train)]
        val_seeds = list(range(variants))
        log(f"quantising {len(train_seeds) + len(val_seeds) + 1} INT8 policies with onnxruntime.quantization")
        fp32, int8, paths, int8_share = make_variants(Path(model), work, train_seeds + val_seeds)
        stem = Path(model).stem
        names = (f"{stem}_float.onnx", f"{stem}_int8.onnx")
        named = {names[0]: fp32, names[1]: int8}
        named.update({f"{stem}_policy_train{s}.onnx": paths[s] for s in train_seeds})
        for name, p in list(named.items()):
            named[name] = p.rename(p.with_name(name))
        held_out = [paths[s] for s in val_seeds]
        if sequential:
            log(f"profiling {len(named)} models (float, all-INT8, {train} random policies), per-operator")
            results = _time_here(list(named.values()), threads, runs, warmup, profile_runs)
        else:
            log(f"timing {len(named)} profile models (float, all-INT8, {train} random policies) and {variants} "
                f"held-out policies, interleaved; per-operator profiles of the profile models only")
            both = _time_here([*named.values(), *held_out], threads, runs, warmup, profile_runs, len(named))
            results, measured = both[: len(named)], both[len(named):]
        facts = results[0]["device"]
        profile = new_profile("host", device_id_from_facts(facts), facts, "local")
        for r in results:
            add_entry(profile, r["artifact"], r["format"], r["runtime"], threads, r["timing"], r["per_op"],
                      sha256=r["sha256"], via="local", conditions=r["conditions"],
                      extra={"variant_of": source, "purpose": "validate-train"})
        path = save_profile(profile, profiles_root)
        # The predictor under test is built from this session's profile entries only.
        predictor = predictor_from_profile_dicts([profile], [path])
        log(f"predicting {variants} held-out policies from the {len(results)} profiled entries")
        predicted = {s: predictor.predict(paths[s], "onnxruntime", threads) for s in val_seeds}
        predicted_at = now_iso()
        drift = None
        if sequential:
            log(f"timing the {variants} policies (interleaved, with the float and all-INT8 models as drift anchors)")
            measured = _time_here([*held_out, named[names[0]], named[names[1]]], threads, runs, warmup, 0)
            profiled = {r["artifact"]: r["timing"]["p50_ms"] for r in results}
            drift = {r["artifact"]: round((r["timing"]["p50_ms"] / profiled[r["artifact"]] - 1) * 100, 1)
                     for r in measured[-2:]}
            measured = measured[:-2]
    # Naive baselines from the same profile, to show what the per-kernel table adds: a constant (median p50 of the
    # profiled entries) and a line between the float and the all-INT8 model by the share of INT8 layers.
    p50 = {r["artifact"]: r["timing"]["p50_ms"] for r in results}
    constant = statistics.median(p50.values())
    rows = []
    for s, m in zip(val_seeds, measured, strict=True):
        p, t = predicted[s]["p50_ms"], m["timing"]["p50_ms"]
        line = p50[names[0]] + (p50[names[1]] - p50[names[0]]) * int8_share[s]
        rows.append({"variant": f"policy_{s}", "int8_layers": round(int8_share[s], 3), "predicted_p50_ms": p,
                     "measured_p50_ms": t, "err_pct": round((p - t) / t * 100, 2),
                     "kernels_in_table": predicted[s]["kernels_in_table"],
                     "baseline_constant_err_pct": round((constant - t) / t * 100, 2),
                     "baseline_line_err_pct": round((line - t) / t * 100, 2)})
    abs_err = sorted(abs(r["err_pct"]) for r in rows)

    def within(key: str) -> float:
        return round(sum(abs(r[key]) <= 10 for r in rows) / len(rows), 3)

    def median_abs(key: str) -> float:
        return round(statistics.median(abs(r[key]) for r in rows), 2)

    summary = {
        "variants": len(rows), "within_10pct_fraction": within("err_pct"),
        "median_abs_err_pct": round(statistics.median(abs_err), 2),
        "p90_abs_err_pct": round(float(np.percentile(abs_err, 90)), 2), "max_abs_err_pct": round(abs_err[-1], 2),
        "mean_err_pct": round(statistics.fmean(r["err_pct"] for r in rows), 2),
        "measured_p50_range_ms": [min(r["measured_p50_ms"] for r in rows), max(r["measured_p50_ms"] for r in rows)],
        "baseline_constant": {"within_10pct_fraction": within("baseline_constant_err_pct"),
                              "median_abs_err_pct": median_abs("baseline_constant_err_pct")},
        "baseline_float_int8_line": {"within_10pct_fraction": within("baseline_line_err_pct"),
                                     "median_abs_err_pct": median_abs("baseline_line_err_pct")},
        "mode": "sequential" if sequential else "interleaved", "anchor_drift_pct": drift,
        "runtime": results[0]["runtime"], "threads": threads, "runs": runs, "train_entries": len(results),
        "predicted_at": predicted_at, "date": now_iso(), "device_id": profile["device_id"], "profile": str(path),
        "seconds": round(time.perf_counter() - started, 1),
        "method": f"random per-layer INT8 exclusions of {source} (onnxruntime.quantization, QDQ), held out",
    }
    profile["validation"] = {k: v for k, v in summary.items() if k != "profile"}
    profile["entries"] = []  # the entries are already on disk; save_profile merges
    save_profile(profile, profiles_root)
    return {"summary": summary, "rows": rows}
