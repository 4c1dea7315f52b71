"""Drop-in artifacts judged by a client nobody here wrote: RapidOCR (`rapidocr-onnxruntime==1.4.4`, its own pre- and
post-processing) reading rendered text pages with the PP-OCR models it ships, with edgekit's `--recipe basic`
artifacts and with the artifacts the default `edgekit compress` recommends, for each of det / cls / rec.

    make bench-deps                                     # the client's own environment (.venv-bench)
    .venv/bin/python benchmarks/ocr_client.py --out /tmp/ocr-bench     # last line: one JSON object

Steps: (1) inputs for each model from pages nobody evaluates on (seeds 1000+), made by RapidOCR's own
pre-processing (det: 1x3x736x992 pages; cls: 3x48x192 line crops, half turned 180 degrees, labelled; rec: 3x48x320
crops with their text); (2) `edgekit compress` per model in a fresh process: `--recipe basic` (ONNX), and the default
(auto) with the model's task (text-detect for det, the labelled classifier for cls, text-recognize with the
strings for rec); (3) RapidOCR on 24 other pages (seeds 0..23) with the shipped models, the basic artifacts and the
auto ones, the three sets interleaved page by page in one process, one thread. The recommended artifact of each model
is the run's summary artifact; where it is not an ONNX file (RapidOCR runs ONNX Runtime), the fastest verified ONNX
artifact within the budget that keeps the signature, and the output says which (`used`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
EDGEKIT = [sys.executable, "-m", "edgekit"]
MODELS = {"det": ("ch_PP-OCRv4_det_infer.onnx", None, "text-detect"),
          "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "1,3,48,192", None),
          "rec": ("ch_PP-OCRv4_rec_infer.onnx", "1,3,48,320", "text-recognize")}


def _client(*args: str) -> dict:
    import matplotlib

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    r = subprocess.run([str(BENCH_PY), str(ROOT / "benchmarks" / "_ocr_client.py"), *args, "--fonts", str(fonts)],
                       capture_output=True, text=True, timeout=7200)
    if r.returncode != 0:
        raise SystemExit(f"the RapidOCR client failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _models_dir() -> Path:
    r = subprocess.run([str(BENCH_PY), "-c", "import rapidocr_onnxruntime, os; print(os.path.dirname("
                                             "rapidocr_onnxruntime.__file__))"], capture_output=True, text=True)
    return Path(r.stdout.strip()) / "models"


def _compress(model: Path, out: Path, shape: str, data: Path, extra: list[str]) -> dict:
    """One `edgekit compress` in a fresh process; its report and wall time."""
    t0 = time.perf_counter()
    r = subprocess.run([*EDGEKIT, "compress", str(model), "--input-shape", shape, "--data", str(data), "--out",
                        str(out), *extra], capture_output=True, text=True, timeout=5400)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        return {"exit": r.returncode, "error": (r.stderr.strip().splitlines() or ["?"])[-1], "seconds": seconds}
    return {"exit": 0, "report": json.loads((out / "report.json").read_text()), "seconds": seconds}


def _onnx_pick(run: Path, report: dict) -> tuple[Path, str]:
    """(the ONNX artifact RapidOCR runs, what was picked): the recommended one, else the fastest verified ONNX
    artifact within the budget that keeps the model's signature."""
    from edgekit.chain import quality_drop

    rec = (report.get("summary") or {}).get("artifact")
    arts = {a["path"]: a for a in report["artifacts"]}
    if rec and arts[rec]["format"] == "onnx":
        return run / rec, f"{rec} (recommended)"
    base = ((report.get("baseline") or {}).get("point") or {}).get("quality")
    budget = (report.get("budget") or {}).get("max_quality_drop")
    ok = [a for a in arts.values() if a["format"] == "onnx" and (a.get("verification") or {}).get("passed")
          and (a.get("signature") or {}).get("kept", True)
          and (budget is None or (quality_drop(report, base, (a["verification"].get("quality") or {}).get("value"))
                                  or 0.0) <= budget + 1e-9)]
    note = "" if ok else "; no ONNX artifact keeps the signature"
    ok = ok or [a for a in arts.values() if a["format"] == "onnx" and (a.get("verification") or {}).get("passed")]
    best = min(ok, key=lambda a: (a.get("latency") or {}).get("p50_ms") or float("inf"))
    return run / best["path"], f"{best['path']} (the recommended {rec} is not ONNX{note})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/ocr-client-bench"))
    p.add_argument("--pages", type=int, default=24, help="evaluation pages")
    p.add_argument("--data-pages", type=int, default=40, help="pages the models' inputs are made from")
    a = p.parse_args()
    if not BENCH_PY.is_file():
        raise SystemExit("the client's environment is missing: run `make bench-deps` (creates .venv-bench with "
                         "rapidocr-onnxruntime==1.4.4 and OpenCV)")
    from edgekit.signature import onnx_file_signature

    models_dir = _models_dir()
    data_info = _client("data", str(a.out / "data"), "--pages", str(a.data_pages), "--seed", "1000")
    print(json.dumps({"data": data_info}), flush=True)
    det_shape = "1," + ",".join(map(str, data_info["det_shape"]))
    sets: dict[str, dict[str, str]] = {"shipped": {}, "basic": {}, "auto": {}}
    runs: dict[str, dict] = {}
    kept = []
    for key, (file, shape, task) in MODELS.items():
        model, data = models_dir / file, a.out / "data" / f"{key}.npz"
        sets["shipped"][key] = str(model)
        shape = shape or det_shape
        basic = _compress(model, a.out / "runs" / f"{key}-basic", shape, data,
                          ["--recipe", "basic", "--set", "export.formats=[onnx]"])
        auto = _compress(model, a.out / "runs" / f"{key}-auto", shape, data, ["--task", task] if task else [])
        row: dict = {"basic_seconds": round(basic["seconds"], 1), "auto_seconds": round(auto["seconds"], 1)}
        for name, res in (("basic", basic), ("auto", auto)):
            if res["exit"] != 0:
                row[f"{name}_error"] = res["error"]
                sets[name][key] = str(model)  # the client still needs a model: the shipped one, and it says so
                continue
            path, used = _onnx_pick(a.out / "runs" / f"{key}-{name}", res["report"])
            sets[name][key] = str(path)
            ok, why = onnx_file_signature(model).compare(onnx_file_signature(path))
            row[f"{name}_used"], row[f"{name}_signature_kept"] = used, ok
            if not ok:
                row[f"{name}_signature_why"] = why
            if name == "auto":
                kept.append(ok)
                s = res["report"]["summary"]
                row.update(auto_metric=s.get("quality_metric"), auto_drop=s.get("quality_drop"),
                           auto_unit=s.get("quality_unit"), auto_artifact=s.get("artifact"))
        runs[key] = row
        print(json.dumps({key: row}), flush=True)
    (a.out / "models.json").write_text(json.dumps(sets))
    client = _client("run", "--models", str(a.out / "models.json"), "--pages", str(a.pages), "--seed", "0")
    print(json.dumps({"client": client}), flush=True)
    shipped, basic, auto = client["shipped"], client["basic"], client["auto"]
    speedup = (shipped["seconds_per_page"] / auto["seconds_per_page"]
               if shipped["seconds_per_page"] and auto["seconds_per_page"] else None)
    print(json.dumps({
        "ocr_char_acc_shipped": round(shipped["char_acc"], 4), "ocr_char_acc_basic": round(basic["char_acc"], 4),
        "ocr_char_acc_auto": round(auto["char_acc"], 4), "ocr_pages_failed_basic": basic["pages_failed"],
        "ocr_pages_failed_auto": auto["pages_failed"],
        "ocr_seconds_per_page_shipped": round(shipped["seconds_per_page"], 4),
        "ocr_seconds_per_page_auto": round(auto["seconds_per_page"], 4) if auto["seconds_per_page"] else None,
        "ocr_speedup": round(speedup, 3) if speedup else None, "signature_kept": bool(kept) and all(kept),
        "pages": a.pages, "models": runs}))


if __name__ == "__main__":
    main()
