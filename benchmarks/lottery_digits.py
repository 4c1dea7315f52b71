"""Lottery tickets on scikit-learn's digits: an MLP 64-300-100-10 (LeNet-300-100 shape) and the small digits CNN.

For each network and seed: iterative magnitude pruning (Adam, rewind to initialisation, 20% per round, the output
layer at half rate as in the paper; the CNN also prunes its first layer at half rate), with the paper's controls
(the same mask from a random re-initialisation; a random mask of the same per-layer sparsity from the same
initialisation). It uses the prune stage's own code (edgekit.prune.imp.run_imp with the stage's Settings).

Structured tickets (`cnn_channel`): the digits CNN pruned over channel groups (edgekit.prune.structured: 30% of each
group's channels per round, kept counts multiples of 8), with the re-init control (the same thin network from a fresh
initialisation) and random channels; its results carry the suffix `_cnn_channel`.

Late rewinding (Frankle et al. 2019, "Stabilizing the Lottery Ticket Hypothesis"): the MLP is also run with the
survivors reset to their weights after `--late-rewind-step` training steps of round 0 (default: three epochs, 66
steps, 6% of a round; one epoch, 22 steps, was measured too) instead of to initialisation; its results carry the
suffix `_late_rewind`.

Prints one JSON line per network, seed and round, one per network with the mean curve, and last one JSON object:
    dense_acc_mlp, w_ticket_mlp, w_reinit_mlp, w_random_mlp, acc_ticket_mlp_at_1pct, acc_reinit_mlp_at_1pct,
    acc_random_mlp_at_1pct, remaining_mlp_at_1pct, dense_acc_cnn, w_ticket_cnn, w_reinit_cnn, w_random_cnn,
    w_ticket_mlp_late_rewind, w_reinit_mlp_late_rewind, w_random_mlp_late_rewind, late_rewind_step, seconds
W(x): the smallest weights-remaining fraction down to which x's mean test accuracy (over seeds) stays within
1 point of the mean dense accuracy at every round; *_at_1pct: mean test accuracy at the round whose weights
remaining is closest to 1%. Fractions are in 0..1.

    .venv/bin/python benchmarks/lottery_digits.py              # full: 3 seeds, both networks (2 worker processes)
    .venv/bin/python benchmarks/lottery_digits.py --quick      # a smoke run: 1 seed, few rounds and epochs
    .venv/bin/python benchmarks/lottery_digits.py --only mlp_late   # only the MLP with late rewinding
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

KEYS = ("ticket", "reinit", "random_masks")
CHANNEL_RATE = 0.3  # structured series: 30% of each channel group's channels per round
CHANNEL_MULTIPLE = 8  # kept channels are multiples of 8 (the ARM targets' channel multiple)
SHORT = {"ticket": "ticket", "reinit": "reinit", "random_masks": "random"}


def run_one(net: str, seed: int, rounds: int, epochs: int, rewind_step: int = 0) -> dict[str, Any]:
    """One IMP run (in a worker process with one torch thread); returns its per-round records."""
    import torch

    torch.set_num_threads(1)
    from edgekit import data, zoo
    from edgekit.prune.imp import run_imp
    from edgekit.prune.layers import plan_layers
    from edgekit.prune.patterns import parse_pattern
    from edgekit.stages.prune import Settings

    ds = data.digits()
    torch.manual_seed(seed)
    model = zoo.digits_mlp() if net.startswith("mlp") else zoo.digits_cnn()
    scales = {"first_layer_scale": 1.0, "last_layer_scale": 0.5} if net.startswith("mlp") else {}
    settings = Settings(rounds=rounds, rate=0.2, epochs=epochs, seed=seed, device="cpu", optimizer="adam",
                        lr=1.2e-3, rewind_step=rewind_step, target_rules="off", **scales)
    start, cpu = time.perf_counter(), time.process_time()
    if net == "cnn_channel":
        from edgekit.prune.structured import run_channel_imp

        settings = replace(settings, structure="channel", rate=CHANNEL_RATE)
        res = run_channel_imp(model, ds.x_train, ds.y_train, ds.x_test, ds.y_test, settings, torch.zeros(1, 1, 8, 8),
                              CHANNEL_MULTIPLE, None)
        return {"net": net, "seed": seed, "rounds": res.rounds, "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu, "widths": res.rounds[-1]["widths"]}
    plan = plan_layers(model, settings, None, (1, 1, 8, 8), parse_pattern(settings.pattern))
    res = run_imp(model, ds.x_train, ds.y_train, ds.x_test, ds.y_test, settings, plan.rates, None)
    return {"net": net, "seed": seed, "rounds": res.rounds, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu, "layer_rates": plan.rates}


def mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: weights remaining (identical across seeds) and mean accuracy of each series."""
    out = []
    for i, first in enumerate(runs[0]["rounds"]):
        row: dict[str, Any] = {"round": i, "remaining": first["remaining"]}
        for k in KEYS:
            vals = [r["rounds"][i][k] for r in runs]
            row[k] = None if any(v is None for v in vals) else sum(vals) / len(vals)
        out.append(row)
    return out


def w_of(curve: list[dict[str, Any]], key: str, dense: float) -> float:
    """Smallest weights remaining down to which `key` stays within 1 point of dense at every round."""
    w = 1.0
    for row in curve[1:]:
        if row[key] is None or row[key] < dense - 0.01:
            break
        w = row["remaining"]
    return w


def at_fraction(curve: list[dict[str, Any]], frac: float) -> dict[str, Any]:
    return min(curve[1:], key=lambda r: abs(math.log(r["remaining"]) - math.log(frac)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--mlp-rounds", type=int, default=22, help="0.8^r: 22 rounds end near 1%% of weights")
    ap.add_argument("--mlp-epochs", type=int, default=50)
    ap.add_argument("--cnn-rounds", type=int, default=15)
    ap.add_argument("--cnn-epochs", type=int, default=15)
    ap.add_argument("--late-rewind-step", type=int, default=66,
                    help="rewind step of the late-rewinding MLP runs (66 steps: three epochs of batch 64, 6%% of a round)")
    ap.add_argument("--cnn-channel-rounds", type=int, default=5)
    ap.add_argument("--only", choices=["mlp", "cnn", "mlp_late", "cnn_channel"], action="append",
                    help="run only these series (repeatable; default: all four)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 rounds, 3 epochs: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.mlp_rounds, args.mlp_epochs, args.cnn_rounds, args.cnn_epochs = 1, 3, 3, 3, 3
        args.cnn_channel_rounds = 2
    start = time.perf_counter()
    series = {"mlp": (args.mlp_rounds, args.mlp_epochs, 0), "cnn": (args.cnn_rounds, args.cnn_epochs, 0),
              "mlp_late": (args.mlp_rounds, args.mlp_epochs, args.late_rewind_step),
              "cnn_channel": (args.cnn_channel_rounds, args.cnn_epochs, 0)}
    series = {k: v for k, v in series.items() if not args.only or k in args.only}
    jobs = [(net, seed, r, e, k) for net, (r, e, k) in series.items() for seed in range(args.seeds)]
    # CNN jobs first: they are the longest, so the two workers finish together.
    jobs.sort(key=lambda j: not j[0].startswith("cnn"))
    results: dict[str, list[dict[str, Any]]] = {net: [] for net in series}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, *j) for j in jobs]
        for fut in futures:
            res = fut.result()
            results[res["net"]].append(res)
            for rec in res["rounds"]:
                print(json.dumps({"net": res["net"], "seed": res["seed"], "round": rec["round"],
                                  "weights_remaining": round(rec["remaining"], 6),
                                  **{f"acc_{SHORT[k]}": rec[k] for k in KEYS}}), flush=True)
            print(json.dumps({"net": res["net"], "seed": res["seed"], "dense_acc": res["rounds"][0]["ticket"],
                              "seconds": round(res["seconds"], 1), "cpu_seconds": round(res["cpu_seconds"], 1)}),
                  flush=True)
    summary: dict[str, Any] = {}
    for net in series:
        runs = sorted(results[net], key=lambda r: r["seed"])
        curve = mean_curve(runs)
        dense = curve[0]["ticket"]
        print(json.dumps({"net": net, "seeds": len(runs), "mean_curve": [
            {"weights_remaining": round(r["remaining"], 6), **{SHORT[k]: r[k] for k in KEYS}} for r in curve]}),
            flush=True)
        name = "mlp" if net == "mlp_late" else net
        suffix = "_late_rewind" if net == "mlp_late" else ""
        summary[f"dense_acc_{name}{suffix}"] = dense
        for k in KEYS:
            summary[f"w_{SHORT[k]}_{name}{suffix}"] = w_of(curve, k, dense)
        if net == "mlp_late":
            summary["late_rewind_step"] = args.late_rewind_step
        if net == "cnn_channel":
            last = curve[-1]
            summary.update(cnn_channel_weights_remaining=last["remaining"],
                           **{f"acc_{SHORT[k]}_cnn_channel_last": last[k] for k in KEYS})
        if net == "mlp":
            row = at_fraction(curve, 0.01)
            summary["remaining_mlp_at_1pct"] = row["remaining"]
            for k in KEYS:
                summary[f"acc_{SHORT[k]}_mlp_at_1pct"] = row[k]
    summary.update(seeds=args.seeds, mlp_rounds=args.mlp_rounds, mlp_epochs=args.mlp_epochs,
                   cnn_rounds=args.cnn_rounds, cnn_epochs=args.cnn_epochs, jobs=args.jobs,
                   load_average_1min=os.getloadavg()[0],
                   # CPU time of the training itself: on a shared machine wall time mostly measures the others.
                   cpu_seconds_workers=round(sum(r["cpu_seconds"] for rs in results.values() for r in rs), 1),
                   seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
