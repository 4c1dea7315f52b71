"""How much fine-tuning a thinner PP-OCR classifier needs: the joint search's gap on the classifier, measured.

The joint search (docs/joint.md) judges each pruned candidate after `finetune_epochs` (2) short epochs; on PP-OCR's
text-direction classifier every thinner width lost far more than the 1-point budget that way, so it kept the
unmodified model. This benchmark asks whether longer fine-tuning closes that gap: the classifier (imported, then
fine-tuned on rendered lines like benchmarks/joint_search.py does) is pruned by channel magnitude to each width
(rounded to the host's channel multiple), fine-tuned for up to `--epochs` epochs with held-out accuracy after each
checkpoint, and its float TFLite file is timed interleaved against the unmodified model's (1 thread, LiteRT).

    .venv/bin/python benchmarks/cls_width_finetune.py [--widths 0.75,0.5] [--checkpoints 2,6,12]

Prints one JSON line per checkpoint and ends with one JSON object: per width, `speedup` (float TFLite p50 ratio),
`drop_pts_by_epochs` ({epochs: held-out drop}), and `base_acc`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toolkit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def log(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="0.75,0.5")
    ap.add_argument("--checkpoints", default="2,6,12", help="fine-tuning epochs at which accuracy is measured")
    ap.add_argument("--train", type=int, default=3000, help="rendered training lines")
    ap.add_argument("--test", type=int, default=2000, help="held-out lines")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--distill", type=float, default=0.5, help="weight of distillation from the unmodified model")
    ap.add_argument("--runs", type=int, default=300, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for fine-tuning (timing uses 1)")
    ap.add_argument("--pretune", type=int, default=3, help="epochs the classifier is fine-tuned on rendered lines "
                    "before pruning, as joint_search.py does (0: prune the model as loaded, as --recipe auto does)")
    args = ap.parse_args()

    import torch
    from _common import ppocr_cls_onnx, text_lines

    from edgekit.devices.timing import time_interleaved
    from edgekit.export import tflite as tflite_export
    from edgekit.prune.channels import prune_to_widths
    from edgekit.runtimes import load_runner
    from edgekit.targets import load_target
    from edgekit.train import accuracy, fit, outputs_are_probabilities, predict
    from edgekit.zoo import load_model

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    model = load_model(str(ppocr_cls_onnx()), input_shape=(1, 3, 48, 192)).module
    x, y = text_lines(args.train, seed=0)
    xt, yt = text_lines(args.test, seed=1000)
    probs = outputs_are_probabilities(model, x)
    if args.pretune:
        fit(model, x, y, epochs=args.pretune, lr=3e-4, batch_size=32, seed=0, probabilities=probs)
    model.eval()
    base_acc = accuracy(predict(model, xt), yt)
    teacher = predict(model, x).reshape(len(x), -1).astype(np.float64) if args.distill else None
    log(model="cls", base_acc=base_acc, seconds=round(time.perf_counter() - start, 1))
    multiple = load_target("host").channel_multiple
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",")})
    example = torch.as_tensor(xt[:1])
    work = Path(tempfile.mkdtemp(prefix="cls-width-"))
    files = {"unmodified": tflite_export.export(model, xt[:1], work / "base.tflite")}
    out: dict[str, Any] = {"base_acc": base_acc, "channel_multiple": multiple, "widths": {}}
    for w in [float(v) for v in args.widths.split(",")]:
        thin = copy.deepcopy(model)
        res = prune_to_widths(thin, example, w, multiple)
        row: dict[str, Any] = {"params": [res.params_before, res.params_after], "drop_pts_by_epochs": {}}
        row["drop_pts_by_epochs"][0] = round(100 * (base_acc - accuracy(predict(thin.eval(), xt), yt)), 2)
        done = 0
        for c in checkpoints:
            fit(thin, x, y, epochs=c - done, lr=args.lr, batch_size=32, seed=done, probabilities=probs,
                teacher=teacher, teacher_weight=args.distill)
            done = c
            acc = accuracy(predict(thin.eval(), xt), yt)
            row["drop_pts_by_epochs"][c] = round(100 * (base_acc - acc), 2)
            log(width=w, epochs=c, acc=acc, drop_pts=row["drop_pts_by_epochs"][c],
                seconds=round(time.perf_counter() - start, 1))
        files[f"w{w}"] = tflite_export.export(thin, xt[:1], work / f"w{w}.tflite")
        out["widths"][str(w)] = row
    runners = [load_runner("litert", p, 1) for p in files.values()]
    timings = time_interleaved(runners, [xt[:1]] * len(runners), warmup=20, runs=args.runs)
    p50 = {name: t.p50_ms for name, t in zip(files, timings, strict=True)}
    for w, row in out["widths"].items():
        row["p50_ms"] = p50[f"w{float(w)}"]
        row["speedup"] = round(p50["unmodified"] / row["p50_ms"], 3)
    out.update(unmodified_p50_ms=p50["unmodified"], distill=args.distill, pretune=args.pretune, lr=args.lr, train=args.train,
               test=args.test, runs=args.runs, seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
