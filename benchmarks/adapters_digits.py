"""Adapters and decomposition on digits (and a seed-0 resnet18), with measured TFLite latency.

Part A (adapters): pretrain the default CNN on digits classes 0-4, then adapt to classes 5-9 from a small labelled
budget (--per-class examples per class). Every method trains a fresh 64->5 classifier head (head_params, counted
apart); full fine-tuning also trains every other weight; adapter methods freeze the base (BN statistics included)
and train only adapters on the four convs. Ranks 1, 2, 4, 8; each method's headline is the largest rank whose
adapter holds at most 10% of full fine-tuning's trainable parameters (a rule fixed before running). Accuracy is the
mean over --seeds (labelled subset, head init and data order change with the seed).

Part B (decomposition): CP and Tucker-2 of the trained default CNN (all 10 classes) at two parameter budgets, and
Tucker-2 of torchvision resnet18 (seed-0 init, 128x128 inputs, quality = top-1 agreement with the original on
synthetic inputs, fine-tuned by distilling its decisions). conv_param_ratio counts every conv of the model, 1x1 and
undecomposed ones included. Latency: TFLite (XNNPACK, 1 thread) and ONNX Runtime (1 thread) on this machine,
interleaved p50, original vs decomposed.

    .venv/bin/python benchmarks/adapters_digits.py [--seeds 3] [--per-class 20] [--skip-resnet]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgekit import adapters
from edgekit.adapters import decomposition as dec
from edgekit.data import digits
from edgekit.train import accuracy, fit, predict, sqnr_db, top1_agreement
from edgekit.zoo import digits_cnn, trained_digits_cnn

RANKS = (1, 2, 4, 8)
ADAPTER_METHODS = ("lora-c", "cp-lora", "dora")
EPOCHS, LR, BATCH = 60, 3e-3, 32  # one setting for every method, not tuned per method
HEAD = "15"  # the digits CNN's last Linear


def log(**kw) -> None:
    print(json.dumps(kw), flush=True)


def conv_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def adapt_once(base: nn.Module, method: str, rank: int, xa, ya, xt, yt, seed: int) -> dict:
    torch.manual_seed(seed)
    m = copy.deepcopy(base)
    m[-1] = nn.Linear(64, 5)
    head_params = sum(p.numel() for p in m[-1].parameters())
    out: dict = {"method": method, "rank": rank, "seed": seed}
    if method == "full":
        fit(m, xa, ya, epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=seed)
        out["params"] = sum(p.numel() for p in m.parameters()) - head_params
    elif method == "head":
        for p in m.parameters():
            p.requires_grad_(False)
        for p in m[-1].parameters():
            p.requires_grad_(True)
        with adapters.frozen_norms(m):
            fit(m, xa, ya, epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=seed)
        out["params"] = 0
    else:
        layers = adapters.add_adapters(m, method, rank, float(rank), ["Conv2d"], train_modules=[HEAD])
        out["params"] = adapters.adapter_param_count(m)
        out["params_formula"] = sum(a.expected for a in layers)
        with adapters.frozen_norms(m, [HEAD]):
            fit(m, xa, ya, epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=seed,
                params=[p for p in m.parameters() if p.requires_grad])
        unmerged = predict(m, xt)
        adapters.merge_adapters(m)
        out["merge_max_abs_err"] = float(np.abs(predict(m, xt) - unmerged).max())
    out["head_params"] = head_params
    out["acc"] = accuracy(predict(m, xt), yt)
    out["model"] = m
    return out


def part_adapters(seeds: int, per_class: int) -> dict:
    ds = digits()
    lo = ds.y_train < 5
    torch.manual_seed(0)
    base = digits_cnn(5)
    fit(base, ds.x_train[lo], ds.y_train[lo], epochs=40, lr=3e-3, seed=0)
    tlo, thi = ds.y_test < 5, ds.y_test >= 5
    log(part="pretrain", classes="0-4", acc=accuracy(predict(base, ds.x_test[tlo]), ds.y_test[tlo]))
    xt, yt = ds.x_test[thi], ds.y_test[thi] - 5
    runs: list[dict] = []
    configs = [("full", 0), ("head", 0)] + [(m, r) for m in ADAPTER_METHODS for r in RANKS]
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.choice(np.where(ds.y_train == c)[0], per_class, replace=False) for c in range(5, 10)])
        xa, ya = ds.x_train[idx], ds.y_train[idx] - 5
        for method, rank in configs:
            r = adapt_once(base, method, rank, xa, ya, xt, yt, seed)
            runs.append({k: v for k, v in r.items() if k != "model"})
            log(part="adapt", **runs[-1])
            if seed == 0 and method == "cp-lora" and rank == 4:
                cp_model = r["model"]
    table: dict[tuple[str, int], dict] = {}
    for method, rank in configs:
        rs = [r for r in runs if r["method"] == method and r["rank"] == rank]
        table[(method, rank)] = {"acc": float(np.mean([r["acc"] for r in rs])),
                                 "acc_std": float(np.std([r["acc"] for r in rs])), "params": rs[0]["params"]}
    full = table[("full", 0)]
    headline = {}
    for method in ADAPTER_METHODS:
        fits = [r for r in RANKS if table[(method, r)]["params"] <= 0.10 * full["params"]]
        rank = fits[-1] if fits else RANKS[0]
        headline[method] = {"rank": rank, **table[(method, rank)]}
    sweep = {f"{m}@{r}": table[(m, r)] for m, r in table}
    return {"full": full, "head_only": table[("head", 0)], "headline": headline, "sweep": sweep,
            "merge_max_abs_err": max(r.get("merge_max_abs_err", 0.0) for r in runs),
            "formula_mismatches": sum(r["params"] != r["params_formula"] for r in runs if "params_formula" in r),
            "cp_at_same_rank_fewer": all(table[("cp-lora", r)]["params"] < table[("lora-c", r)]["params"]
                                         for r in RANKS),
            "head_params": runs[0]["head_params"], "base": base, "cp_model": cp_model, "x": xt[:1]}


def onnx_op_types(model: nn.Module, x: np.ndarray, d: Path, name: str) -> dict[str, int]:
    import onnx

    from edgekit.export import onnx as onnx_export

    path = onnx_export.export(model, x, d / f"{name}.onnx")
    ops: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def latency(models: dict[str, nn.Module], x: np.ndarray, d: Path, runs: int) -> dict[str, dict]:
    """Interleaved p50 (ms) of every model in TFLite (XNNPACK) and ONNX Runtime, 1 thread, on this machine."""
    from edgekit.devices.timing import time_interleaved
    from edgekit.export import onnx as onnx_export
    from edgekit.export import tflite as tflite_export
    from edgekit.runtimes import load_runner

    out: dict[str, dict] = {k: {} for k in models}
    for fmt, exporter, runtime in (("tflite", tflite_export, "litert"), ("onnx", onnx_export, "onnxruntime")):
        runners = []
        for k, m in models.items():
            path = exporter.export(m.eval(), x, d / f"{k}{exporter.SUFFIX}")
            runners.append(load_runner(runtime, path, 1))
        for k, t in zip(models, time_interleaved(runners, x, warmup=10, runs=runs), strict=True):
            out[k][f"{fmt}_p50_ms"] = round(t.p50_ms, 4)
        out["runtimes"] = {**out.get("runtimes", {}), fmt: runners[0].runtime}
    return out


def decompose_model(model: nn.Module, method: str, ratio: float, example: np.ndarray, n_iter: int) -> tuple:
    from edgekit.stages.decompose import Settings, plan_layers

    m = copy.deepcopy(model)
    plan = plan_layers(m, Settings(method=method, ratio=ratio), example)
    t0 = time.perf_counter()
    dec.apply_plan(m, plan, n_iter=n_iter)
    return m, plan, time.perf_counter() - t0


def part_digits_decompose(runs: int, d: Path) -> dict:
    ds = digits()
    base = trained_digits_cnn()
    acc0 = accuracy(predict(base, ds.x_test), ds.y_test)
    models = {"original": base}
    results = {"original": {"acc": acc0, "conv_params": conv_params(base)}}
    for method in ("cp", "tucker"):
        for ratio in (0.3, 0.15):
            m, plan, secs = decompose_model(base, method, ratio, ds.x_test[:1], 50)
            acc_dec = accuracy(predict(m, ds.x_test), ds.y_test)
            # As the stage does on labelled data: BN statistics are re-estimated while fine-tuning.
            fit(m, ds.x_train, ds.y_train, epochs=10, lr=1e-3, batch_size=64, seed=0)
            key = f"{method}@{ratio}"
            results[key] = {"conv_params": conv_params(m), "conv_param_ratio": round(conv_params(base) / conv_params(m), 3),
                            "acc_decomposed": acc_dec, "acc": accuracy(predict(m, ds.x_test), ds.y_test),
                            "ranks": {p.name: list(p.ranks) for p in plan}, "decompose_s": round(secs, 2)}
            results[key]["acc_drop_points"] = round(100 * (acc0 - results[key]["acc"]), 2)
            log(part="decompose-digits", name=key, **results[key])
            models[key] = m
    lat = latency(models, ds.x_test[:1], d, runs)
    for k in models:
        results[k].update(lat[k])
    results["runtimes"] = lat["runtimes"]
    return results


def part_resnet(runs: int, d: Path, size: int) -> dict:
    import torchvision

    torch.manual_seed(0)
    base = torchvision.models.resnet18().eval()
    rng = np.random.default_rng(0)
    x_train = rng.standard_normal((256, 3, size, size), dtype=np.float32)
    x_test = rng.standard_normal((128, 3, size, size), dtype=np.float32)
    ref_test = predict(base, x_test)
    y_train = predict(base, x_train).argmax(1).astype(np.int64)
    models = {"original": base}
    # A seed-0 resnet18 puts most synthetic inputs in one class: that share is what agreement must beat to mean
    # anything, so it is reported beside it (with SQNR of the logits, which does not saturate).
    majority = float(np.bincount(ref_test.argmax(1)).max() / len(ref_test))
    results = {"original": {"conv_params": conv_params(base)}, "majority_class_agreement": majority}
    for ratio in (0.3, 0.15):
        m, plan, secs = decompose_model(base, "tucker", ratio, x_test[:1], 10)
        agree_dec = top1_agreement(predict(m, x_test), ref_test)
        with adapters.frozen_norms(m):  # as the stage does when distilling on unlabelled inputs
            fit(m, x_train, y_train, epochs=2, lr=1e-4, batch_size=32, seed=0)
        key = f"tucker@{ratio}"
        results[key] = {"conv_params": conv_params(m), "conv_param_ratio": round(conv_params(base) / conv_params(m), 3),
                        "agreement_decomposed": agree_dec, "agreement": top1_agreement(predict(m, x_test), ref_test),
                        "sqnr_db": round(sqnr_db(ref_test, predict(m, x_test)), 2),
                        "layers_decomposed": len(plan), "decompose_s": round(secs, 2)}
        log(part="decompose-resnet18", name=key, **results[key])
        models[key] = m
    lat = latency(models, x_test[:1], d, runs)
    for k in models:
        results[k].update(lat[k])
    results["runtimes"] = lat["runtimes"]
    results["input"] = [1, 3, size, size]
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--runs", type=int, default=50, help="timed rounds per model")
    ap.add_argument("--resnet-size", type=int, default=128)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (1 suits a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="adapters-bench-") as tmp:
        d = Path(tmp)
        a = part_adapters(args.seeds, args.per_class)
        base_ops = onnx_op_types(a["base"], a["x"], d, "base")
        merged_ops = onnx_op_types(a["cp_model"], a["x"], d, "merged")
        extra_ops = sum(max(0, merged_ops.get(k, 0) - base_ops.get(k, 0)) for k in merged_ops)
        log(part="export", base_ops=base_ops, merged_cp_lora_ops=merged_ops, extra_ops=extra_ops)
        dd = part_digits_decompose(args.runs, d)
        rn = None if args.skip_resnet else part_resnet(args.runs, d, args.resnet_size)
    h = a["headline"]
    full_acc = a["full"]["acc"]
    head = dd["tucker@0.15"]  # the headline decomposition, fixed before running: Tucker-2 at 15% per layer
    summary = {
        "full_ft_acc": round(full_acc, 4), "lora_c_acc": round(h["lora-c"]["acc"], 4),
        "cp_lora_acc": round(h["cp-lora"]["acc"], 4), "dora_acc": round(h["dora"]["acc"], 4),
        "head_only_acc": round(a["head_only"]["acc"], 4),
        "full_ft_params": a["full"]["params"], "lora_c_params": h["lora-c"]["params"],
        "cp_lora_params": h["cp-lora"]["params"], "dora_params": h["dora"]["params"], "head_params": a["head_params"],
        "lora_c_rank": h["lora-c"]["rank"], "cp_lora_rank": h["cp-lora"]["rank"], "dora_rank": h["dora"]["rank"],
        "lora_c_rel_acc": round(h["lora-c"]["acc"] / full_acc, 4), "cp_lora_rel_acc": round(h["cp-lora"]["acc"] / full_acc, 4),
        "lora_c_param_frac": round(h["lora-c"]["params"] / a["full"]["params"], 4),
        "cp_lora_param_frac": round(h["cp-lora"]["params"] / a["full"]["params"], 4),
        "cp_fewer_than_lora_c_at_each_rank": a["cp_at_same_rank_fewer"], "formula_mismatches": a["formula_mismatches"],
        "merge_max_abs_err": a["merge_max_abs_err"], "merged_extra_onnx_ops": extra_ops,
        "decomp_method": "tucker@0.15", "decomp_param_ratio": head["conv_param_ratio"],
        "decomp_acc_drop": head["acc_drop_points"],
        "decomp_tflite_latency_ratio": round(head["tflite_p50_ms"] / dd["original"]["tflite_p50_ms"], 3),
        "decomp_onnx_latency_ratio": round(head["onnx_p50_ms"] / dd["original"]["onnx_p50_ms"], 3),
        "digits_decompositions": {k: v for k, v in dd.items()}, "adapter_sweep": a["sweep"],
        "resnet18": rn, "seeds": args.seeds, "per_class": args.per_class, "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
