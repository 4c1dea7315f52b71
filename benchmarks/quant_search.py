"""INT8 policy search on the built-in digits CNN and on torchvision mobilenet_v2, in ONNX Runtime on this machine.

For each model: float, full INT8 (per-channel, same runtime), NNCF's default INT8 and the searched policy: p50
latency (interleaved in one process, ORT spinning off), size and quality; search wall time and candidates evaluated.

The search's constraint is derived from a measurement, not tuned: max_quality_drop = half of full INT8's drop (the
issue's bar), so the chooser returns the fastest policy (within 10%) that keeps at most half of INT8's drop; the
verdict then checks it is >= 0.9x as fast as full INT8.

mobilenet_v2: no trained weights can be downloaded here. The model is torchvision's seed-0 initialisation with its
BatchNorm statistics re-estimated on 64 synthetic inputs (eval-mode BN with the default running stats makes the
random network's output nearly constant, which would make agreement meaningless). Inputs are synthetic
standard-normal images, unrelated to any data set; quality = top-1 agreement with the float model (plus SQNR).
The digits CNN is trained (cached) and scored by accuracy on the digits test split.

Usage: .venv/bin/python benchmarks/quant_search.py [--models cnn,mnv2] [--trials 40] [--out DIR]
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toolkit"))


def mobilenet_v2_bn_calibrated(n: int = 64, seed: int = 0):
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2()
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the calibration batches
            mod.reset_running_stats()
    x = torch.as_tensor(np.random.default_rng(seed + 1).standard_normal((n, 3, 224, 224), dtype=np.float32))
    model.train()
    with torch.no_grad():
        for i in range(0, n, 16):
            model(x[i:i + 16])
    return model.eval()


def setup(name: str, work: Path, args: argparse.Namespace) -> dict:
    from edgekit.data import digits
    from edgekit.export import onnx as onnx_export
    from edgekit.zoo import load_model

    if name == "cnn":
        model = load_model(None, None, None, None).module
        ds = digits()
        calib, x_eval, y_eval = ds.x_train[:64], ds.x_test, ds.y_test
        metric_note = "accuracy on the digits test split (450 images)"
    else:
        model = mobilenet_v2_bn_calibrated()
        rng = np.random.default_rng(7)  # not the BN-statistics inputs
        calib = rng.standard_normal((args.mnv2_calib, 3, 224, 224), dtype=np.float32)
        x_eval = rng.standard_normal((args.mnv2_eval, 3, 224, 224), dtype=np.float32)
        y_eval = None
        metric_note = (f"top-1 agreement with the float model on {args.mnv2_eval} synthetic N(0,1) inputs "
                       "(untrained, BN-recalibrated weights)")
    path = onnx_export.export(model, x_eval[:1], work / f"{name}.onnx")
    return {"float": path, "calib": calib.astype(np.float32), "x": x_eval.astype(np.float32), "y": y_eval,
            "note": metric_note}


def bench_model(name: str, args: argparse.Namespace, work: Path) -> tuple[dict, dict]:
    from edgekit.devices.timing import time_files
    from edgekit.quant import nncf_backend, onnx_backend
    from edgekit.quant.driver import search_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.policy import INT8_CHANNEL, Policy
    from edgekit.quant.sensitivity import onnx_latency_shares
    from edgekit.search_core import Constraints

    d = setup(name, work, args)
    wdir = work / name
    backend = onnx_backend.OnnxQuantizer(d["float"], d["calib"], wdir)
    scorer = Scorer(backend, "onnxruntime", d["float"], d["x"], d["y"], wdir, threads=1, latency="measured",
                    timing_runs=args.timing_runs)
    t0, c0 = time.perf_counter(), time.process_time()
    full = scorer.score(Policy.uniform(backend.layers, INT8_CHANNEL, calibration="minmax",
                                       label="full INT8 per-channel"), "full-int8", time_it=False)
    max_drop = max(0.0, full.drop / 2)
    shares = onnx_latency_shares(d["float"], backend.layers, d["x"], wdir)
    r = search_runtime(scorer, fmt="onnx", backend_name="onnxruntime", calibrations=onnx_backend.CALIBRATIONS,
                       trials=args.trials, constraints=Constraints(max_quality_drop=max_drop), seed=0,
                       max_seconds=args.max_seconds, final_runs=10, shares=shares)
    search_s = time.perf_counter() - t0
    search_cpu = time.process_time() - c0
    nq = nncf_backend.NncfQuantizer(d["float"], d["calib"])
    nncf = scorer.score_file(nq.default_int8(wdir / "nncf-default.onnx"), "NNCF default INT8")
    r.extra["NNCF default INT8"] = nncf
    paths = {"float": d["float"], "int8": r.int8.path, "nncf": nncf.path}
    if r.chosen is not r.int8:
        paths["policy"] = r.chosen.path
    timing = time_files({n: ("onnxruntime", p) for n, p in paths.items()}, d["x"], 1, args.final_runs)
    timing.setdefault("policy", timing["int8"])  # the search chose full INT8 itself
    r.timings = {"float": timing["float"], "int8": timing["int8"], "chosen": timing["policy"]}
    v = r.verdict()
    flat = {f"{name}_float_p50_ms": timing["float"]["p50_ms"], f"{name}_int8_p50_ms": timing["int8"]["p50_ms"],
            f"{name}_nncf_p50_ms": timing["nncf"]["p50_ms"], f"{name}_policy_p50_ms": timing["policy"]["p50_ms"],
            f"{name}_float_quality": round(r.float_quality, 5), f"{name}_int8_drop": round(r.int8.drop, 3),
            f"{name}_nncf_drop": round(nncf.drop, 3), f"{name}_policy_drop": round(r.chosen.drop, 3),
            f"{name}_int8_sqnr_db": round(r.int8.sqnr_db, 2), f"{name}_policy_sqnr_db": round(r.chosen.sqnr_db, 2),
            f"{name}_float_mb": round(d["float"].stat().st_size / 1e6, 4),
            f"{name}_int8_mb": round(r.int8.size_mb, 4), f"{name}_nncf_mb": round(nncf.size_mb, 4),
            f"{name}_policy_mb": round(r.chosen.size_mb, 4), f"{name}_search_seconds": round(search_s, 1),
            f"{name}_search_cpu_seconds": round(search_cpu, 1), f"{name}_noise40db_drop": r.noise_floor,
            f"{name}_candidates": r.evaluated, f"{name}_policy_speed_vs_int8": v["speed_vs_int8"],
            f"{name}_bar_met": v["met"], f"{name}_metric": r.metric}
    detail = {"model": name, "metric": d["note"], "max_quality_drop": max_drop, "result": r.as_dict(),
              "timings": timing}
    if args.out:
        from edgekit.quant.report import markdown, plot_pareto

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot = plot_pareto(out / f"{name}_pareto.png", [r], name)
        (out / f"{name}.md").write_text(markdown(r, plot.name if plot else None) + "\n")
        r.chosen.policy.save(out / f"{name}_policy.json")
    return flat, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cnn,mnv2")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--timing-runs", type=int, default=20)
    ap.add_argument("--final-runs", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=480.0, help="time limit of one search (sensitivity included)")
    ap.add_argument("--mnv2-calib", type=int, default=32)
    ap.add_argument("--mnv2-eval", type=int, default=128)
    ap.add_argument("--out", default="", help="also write each model's Markdown section, plot and policy here")
    args = ap.parse_args()
    load = os.getloadavg()
    flat: dict = {"cores": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load], "threads": 1,
                  "runtime": "onnxruntime"}
    details = []
    with tempfile.TemporaryDirectory(prefix="edgekit-quant-bench-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            f, d = bench_model(name, args, Path(tmp))
            flat.update(f)
            details.append(d)
            print(json.dumps(d, default=str))
    flat["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(flat))


if __name__ == "__main__":
    main()
