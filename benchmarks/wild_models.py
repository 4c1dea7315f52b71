"""Models as they come: the default `edgekit compress` on trained files from other tools, each in a fresh process under
`/usr/bin/time -v` (peak resident memory of that process).

    make bench-deps                                      # ultralytics, MediaPipe's .tflite files, RapidOCR's models
    .venv/bin/python benchmarks/wild_models.py --out /tmp/wild     # last line: one JSON object

Files: YOLOv8n built from ultralytics' own model YAML (random weights, nothing downloaded) and exported by ultralytics'
own ONNX exporter at 320x320; MediaPipe's face detector (short range), its sparse full-range variant and the hand
landmark model (`mediapipe==0.10.14`, no signature defs); the nine Caffe2-era graphs the onnx package ships
(`onnx/backend/test/data/light`); PP-OCRv4's detector at 1,3,736,992 (the size RapidOCR feeds it for a 640x480 page);
a small voice-activity model with a recurrent state input (audio [1, 512], state [2, 1, 64] -> probability, new
state), built and exported here. Per file: `exit`, `artifacts_verified`, `skipped` (count), `seconds`,
`peak_rss_mb`, `traceback` (a Python traceback on stderr); `finished` counts files that ended with exit 0 and at least
one verified, measured artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHT = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512")


def yolov8n(out: Path) -> Path:
    """YOLOv8n from ultralytics' model YAML (random weights), exported by ultralytics' own ONNX exporter."""
    path = out / "yolov8n.onnx"
    if path.is_file():
        return path
    code = ("import os; os.environ['YOLO_OFFLINE'] = '1'; from ultralytics import YOLO; "
            f"p = YOLO('yolov8n.yaml').export(format='onnx', imgsz=320, opset=17); import shutil; "
            f"shutil.move(p, {str(path)!r})")
    env = {**os.environ, "PYTHONPATH": str(ROOT / ".bench-pkgs"), "YOLO_CONFIG_DIR": str(out / "yolo-config")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=out, env=env, capture_output=True, timeout=600)
    return path


def vad(out: Path) -> Path:
    """A voice-activity model with a recurrent state: a GRU over 32-sample frames of a 512-sample chunk."""
    import torch
    import torch.nn as nn

    path = out / "vad.onnx"
    if path.is_file():
        return path

    class Vad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.frame, self.gru, self.head = nn.Linear(32, 64), nn.GRU(64, 64, num_layers=2), nn.Linear(64, 1)

        def forward(self, audio: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            frames = torch.relu(self.frame(audio.reshape(audio.shape[0], 16, 32))).transpose(0, 1)
            seq, new_state = self.gru(frames, state)
            return torch.sigmoid(self.head(seq[-1])), new_state

    torch.onnx.export(Vad().eval(), (torch.randn(1, 512), torch.zeros(2, 1, 64)), str(path), dynamo=True,
                      input_names=["audio", "state"], output_names=["prob", "new_state"]).save(str(path))
    return path


def files(out: Path) -> list[tuple[str, Path, list[str]]]:
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    models = ROOT / ".bench-models"
    bench_py = ROOT / ".venv-bench" / "bin" / "python"
    rapid = subprocess.run([str(bench_py), "-c", "import rapidocr_onnxruntime, os; print(os.path.dirname("
                                                 "rapidocr_onnxruntime.__file__))"], capture_output=True, text=True)
    det = Path(rapid.stdout.strip()) / "models" / "ch_PP-OCRv4_det_infer.onnx"
    return [("yolov8n", yolov8n(out), ["--input-shape", "1,3,320,320"]),
            ("face_detection_short_range", models / "face_detection_short_range.tflite", []),
            ("face_detection_full_range_sparse", models / "face_detection_full_range_sparse.tflite", []),
            ("hand_landmark_lite", models / "hand_landmark_lite.tflite", []),
            *[(f"caffe2_{n}", light / f"light_{n}.onnx", []) for n in LIGHT],
            ("ppocrv4_det_736x992", det, ["--input-shape", "1,3,736,992"]),
            ("vad_stateful", vad(out), [])]


def run_one(name: str, model: Path, args: list[str], out: Path) -> dict:
    run = out / "runs" / name
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "edgekit", "compress", str(model), "--out", str(run),
           "--fresh", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", r.stderr)
    parts = [float(p) for p in wall.group(1).split(":")] if wall else [0.0]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    row = {"exit": r.returncode, "seconds": round(seconds, 1),
           "peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None, "traceback": "Traceback" in r.stderr}
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("edgekit: error")]
    if errors:
        row["error"] = errors[-1][:300]
    report = run / "report.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        arts = rep.get("artifacts", [])
        row["artifacts_verified"] = sum(bool((a.get("verification") or {}).get("passed")) for a in arts)
        row["measured"] = sum((a.get("latency") or {}).get("source") == "measured" for a in arts
                              if (a.get("verification") or {}).get("passed"))
        row["skipped"] = len(rep.get("skipped") or [])
        row["skipped_why"] = [f"{s['stage']}/{s['format']}: {s['why'][:160]}" for s in rep.get("skipped") or []]
        s = rep.get("summary") or {}
        row.update(metric=s.get("quality_metric"), artifact=s.get("artifact"), speedup=s.get("speedup"),
                   drop=s.get("quality_drop"))
    else:
        row.update(artifacts_verified=0, measured=0, skipped=0)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/wild-models"))
    p.add_argument("--only", default="", help="comma-separated names (default: every file)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, model, args in files(a.out):
        if a.only and name not in a.only.split(","):
            continue
        rows[name] = run_one(name, model, args, a.out)
        print(json.dumps({name: rows[name]}), flush=True)
    finished = sum(r["exit"] == 0 and r.get("artifacts_verified", 0) > 0 and r.get("measured", 0) > 0
                   for r in rows.values())
    print(json.dumps({"files": len(rows), "finished": finished,
                      "tracebacks": sum(r["traceback"] for r in rows.values()),
                      "max_peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in rows.values()),
                      **{k: {f: v for f, v in r.items() if f != "skipped_why"} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
