"""One pipeline, end to end: the full chain on the digits CNN, and `--recipe auto` on a real edge model.

digits (chain_*): baseline, prune, sparsify, decompose, quantize, export, verify, measure on the built-in digits CNN,
host target. chain_ok is true when the run finishes, every artifact (final and baseline) is verified in its own
runtime, and the summary's drop equals the loaded model's accuracy minus the recommended artifact's verified
accuracy; stale_files counts files in artifacts/ that report.json does not list (must be 0).

cls (cls_*): PP-OCR's text-direction classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx from the rapidocr-onnxruntime
1.4.4 wheel, benchmarks/_common.py) compressed by `edgekit compress MODEL --data LINES.npz` (the default, auto) for
the host target; LINES.npz holds --cls-train rendered training lines (default 3000) and 400 test lines. Accuracy is measured on 400 rendered lines (seed 2000) that edgekit never sees (not training, not
calibration, not the test split the run chooses on). Speed: the unmodified model's float artifacts over every runtime
edgekit exports to (cls_float_best_p50_ms: the fastest) against the artifact auto recommends (cls_auto_p50_ms), timed
interleaved in this process, 1 thread, p50 over --runs rounds.

Importing the Paddle-exported file into torch needs the ONNX import pass (edgekit/importers, issue 12). Without it
the cls part reports the import error; `--preslim` runs onnxslim on the file first, as a stand-in, and says so.

Usage: .venv/bin/python benchmarks/pipeline.py [--parts digits,cls] [--runs 300] [--out DIR] [--preslim]
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toolkit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHAIN = {"stages": [
    {"baseline": {}},
    {"prune": {"rounds": 3, "epochs": 5, "reinit_control": False, "random_mask_control": False}},
    {"sparsify": {"oneshot_sparsity": 0.0}},
    {"decompose": {"method": "tucker", "ratio": 0.3, "epochs": 10}},
    {"quantize": {"trials": 12, "final_runs": 60}},
    {"export": {}}, {"verify": {}}, {"measure": {"runs": 100}}]}


def stale_files(out: Path, report: dict[str, Any]) -> list[str]:
    listed = {a["path"] for a in report["artifacts"]} | {f["path"] for f in report.get("files", [])}
    listed |= {c for a in report["artifacts"] for c in a.get("companions") or []}  # e.g. a .pte's sidecar JSON
    return sorted(p.relative_to(out).as_posix() for p in (out / "artifacts").rglob("*")
                  if p.is_file() and p.relative_to(out).as_posix() not in listed)


def digits_chain(work: Path) -> dict[str, Any]:
    from edgekit import api

    out = work / "digits-chain"
    start = time.perf_counter()
    try:
        result = api.compress(None, "host", recipe=CHAIN, out=out, resume=False)
    except Exception as e:  # report why, never a number
        return {"chain_ok": False, "chain_error": str(e)[:300], "stale_files": None, "chain_drop_pts": None}
    report = result.report
    arts = report["artifacts"] + report["baseline"]["artifacts"]
    verified = all((a.get("verification") or {}).get("passed") for a in arts)
    s = report["summary"]
    base_acc = next(st for st in report["stages"] if st["name"] == "baseline")["metrics"]["accuracy"]
    rec = next(a for a in report["artifacts"] if a["path"] == s["artifact"])
    final_acc = rec["verification"]["quality"]["value"]
    drop_matches = abs(s["quality_drop"] - 100 * (base_acc - final_acc)) < 1e-3
    stale = stale_files(out, report)
    points = {st["name"]: st["after"] for st in report["stages"] if st.get("after")}
    return {"chain_ok": bool(verified and drop_matches and not stale), "chain_drop_pts": s["quality_drop"],
            "stale_files": len(stale), "chain_verified": verified, "chain_drop_matches": drop_matches,
            "chain_baseline_acc": base_acc, "chain_final_acc": final_acc, "chain_artifact": s["artifact"],
            "chain_speedup": s.get("speedup"), "chain_superseded": len(report["superseded"]),
            "chain_nonzeros": {k: [p.get("nonzeros"), p.get("params")] for k, p in points.items()},
            "chain_seconds": round(time.perf_counter() - start, 1)}


def _accuracy(path: Path, runtime: str, x: np.ndarray, y: np.ndarray) -> float:
    from edgekit.export.verify import run_artifact

    out, _ = run_artifact(path, runtime, x, 1)
    return float((out.argmax(1) == y[: len(out)]).mean())


def cls(work: Path, runs: int, preslim: bool, n_train: int = 3000) -> dict[str, Any]:
    from _common import CLS_SHAPE, ppocr_cls_onnx, text_lines, write_text_lines_npz

    from edgekit import api
    from edgekit.chain import baseline_artifacts
    from edgekit.devices.timing import time_interleaved
    from edgekit.runtimes import load_runner

    model = ppocr_cls_onnx()
    if preslim:
        import onnx
        import onnxslim

        m = onnx.load(str(model))
        model = work / "cls_slim.onnx"
        onnx.save(onnxslim.slim(m, input_shapes=[f"{m.graph.input[0].name}:1,3,48,192"]), str(model))
    lines = write_text_lines_npz(work / "lines.npz", n_train, 400, seed=0)
    x_hold, y_hold = text_lines(400, seed=2000)
    out = work / "cls-auto"
    start = time.perf_counter()
    try:
        result = api.compress(str(model), "host", data=str(lines), input_shape=CLS_SHAPE, out=out)
    except Exception as e:  # noqa: BLE001 - the import may not be on main yet: report why, never a number
        return {"cls_error": f"{type(e).__name__}: {str(e)[:300]}", "cls_preslim": preslim}
    seconds = time.perf_counter() - start
    report = result.report
    floats = baseline_artifacts(report)
    best = report["summary"]["artifact"]
    paths = [(a["path"], a["runtime"]) for a in floats] + [(best, next(
        a["runtime"] for a in report["artifacts"] if a["path"] == best))]
    # One runner per entry, the auto artifact last (it may be one of the float files: then it is timed twice).
    runners = [load_runner(rt, out / p, 1) for p, rt in paths]
    x1 = x_hold[:1]
    timings = time_interleaved(runners, [x1.reshape(r.input_shape) for r in runners], warmup=20, runs=runs)
    float_p50 = {a["path"]: t.p50_ms for a, t in zip(floats, timings[:-1], strict=True)}
    auto_p50 = timings[-1].p50_ms
    float_best = min(floats, key=lambda a: float_p50[a["path"]])
    float_acc = _accuracy(out / float_best["path"], float_best["runtime"], x_hold, y_hold)
    auto_acc = _accuracy(out / best, paths[-1][1], x_hold, y_hold)
    return {"cls_float_acc": float_acc, "cls_auto_acc": auto_acc, "cls_drop_pts": round(100 * (float_acc - auto_acc), 3),
            "cls_float_best_p50_ms": float_p50[float_best["path"]], "cls_float_best_artifact": float_best["path"],
            "cls_auto_p50_ms": auto_p50, "cls_auto_artifact": best,
            "cls_speedup": round(float_p50[float_best["path"]] / auto_p50, 3),
            "cls_float_p50_ms": float_p50,
            # auto may recommend one of the float files: then the ratio only shows the timing noise of one file
            "cls_auto_is_float_file": best in float_p50,
            "cls_all_p50_ms": {a["path"]: (a.get("latency") or {}).get("p50_ms") for a in report["artifacts"]},
            "cls_plan": [s["name"] for s in report["stages"]],
            "cls_plan_used": [t["name"] for t in report["plan"]["techniques"] if t["used"]],
            "cls_run_summary": {k: report["summary"].get(k) for k in ("quality_before", "quality_after",
                                                                       "quality_drop", "speedup")},
            "cls_seconds": round(seconds, 1), "cls_preslim": preslim, "cls_runs": runs, "cls_train": n_train}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="digits,cls")
    ap.add_argument("--runs", type=int, default=300, help="interleaved timing rounds for the cls comparison")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one); a folder of an "
                                                           "earlier run reuses its finished cls stages")
    ap.add_argument("--cls-train", type=int, default=3000, help="rendered training lines for the cls run (the "
                    "joint search fine-tunes on at most 2000 of them; with 800, width 0.75 measured 1.75 points "
                    "down on the run's 400 test lines and auto kept the loaded model)")
    ap.add_argument("--preslim", action="store_true", help="simplify the cls file with onnxslim first (a stand-in "
                                                               "for the import pass, until it is on main)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    work = args.out or Path(tempfile.mkdtemp(prefix="edgekit-pipeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    if "digits" in parts:
        row = digits_chain(work)
        print(json.dumps(row), flush=True)
        result.update(row)
    if "cls" in parts:
        row = cls(work, args.runs, args.preslim, args.cls_train)
        print(json.dumps(row), flush=True)
        result.update(row)
    result["work"] = str(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
