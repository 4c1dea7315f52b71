"""Device farm and distributed search, on real parts: sshd "devices" on 127.0.0.1 (one slowed, one that dies
mid-run), SQLite and a real PostgreSQL server started here, worker processes sharing one Optuna study.

    .venv/bin/python benchmarks/farm.py [--trials 24] [--pairs 2] [--measurements 24]

Parts (the last line is one JSON object with the keys the issue asks for):

1. queue: `measurements` measurements (the digits CNN's float and INT8 ONNX files side by side) on a farm of three
   devices, one of which dies on its 4th run (mid-measurement): `retried`, `lost` (asked for, never measured).
2. speed: the INT8 policy search of the digits CNN with candidates timed on a healthy three-device farm (fast,
   slowed, normal), one worker against two, the same trials and seed, interleaved pairs; `wall_speedup_2_workers` is
   the median over pairs of one worker's wall time over two workers'. Every device here is this 2-core machine
   (shared with other jobs), so the devices' timing work competes with the workers' quantisation for the same cores:
   it measures the whole system on this machine, not separate boards.
3. same result: the search with a deterministic objective (quality and size; no timing noise) in memory (today's
   path), and with one worker through SQLite and through PostgreSQL: `same_best_as_one_worker` is true when every
   storage returns the same candidates and the same choice. The two-worker search's choice is reported beside it
   (`two_workers_same_best`): with two samplers the trials differ, so equality there is not guaranteed.
4. killed worker: two extra worker processes share a PostgreSQL study while one farm device dies mid-run; worker 1
   is killed (SIGKILL) inside a trial after finishing one: `killed_worker_trials_lost` counts its finished trials
   missing afterwards, `killed_trial_retried` says whether its running trial was run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "toolkit"), str(ROOT / "tests")]

from edgekit.devices import Job, open_device  # noqa: E402
from edgekit.targets import load_target  # noqa: E402
from loopback import dying_python, farm_toml, keygen, slow_python, start_postgres, start_sshd  # noqa: E402


def log(**kw) -> None:
    print(json.dumps(kw), flush=True)


def digits_onnx(work: Path) -> dict:
    """The built-in digits CNN (trained once, cached) as float ONNX, its INT8 file, and its data."""
    from edgekit.data import digits
    from edgekit.export import onnx as onnx_export
    from edgekit.quant.onnx_backend import OnnxQuantizer
    from edgekit.quant.policy import Policy
    from edgekit.zoo import load_model

    bundle = load_model(None)
    d = digits()
    x = d.x_test[:1].astype(np.float32)
    fp32 = onnx_export.export(bundle.module.eval(), x, work / "digits_fp32.onnx")
    calib = d.calibration(64).astype(np.float32)
    q = OnnxQuantizer(fp32, calib, work / "calib")
    int8 = q.apply(Policy.uniform(q.layers), work / "digits_int8.onnx")
    return {"float": fp32, "int8": int8, "calib": calib, "x": d.x_test[:256].astype(np.float32),
            "y": d.y_test[:256]}


def search(m: dict, work: Path, *, plan=None, workers: int = 1, device: str | None = None, trials: int = 16,
           latency: str = "measured", killer=None):
    """One ONNX policy search (quant.driver.search_runtime) as `edgekit quantize` runs it; returns (result,
    Distributed, wall seconds)."""
    from edgekit.quant import onnx_backend
    from edgekit.quant.distributed import write_onnx_spec
    from edgekit.quant.driver import search_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.search import Distributed
    from edgekit.search_core import Constraints
    from edgekit.study import launch_workers

    start = time.perf_counter()
    host = load_target("host")
    dev = open_device(device, target=host) if device else None
    backend = onnx_backend.OnnxQuantizer(m["float"], m["calib"], work)
    scorer = Scorer(backend, "onnxruntime", m["float"], m["x"], m["y"], work, latency=latency, device=dev,
                    timing_runs=20)
    constraints = Constraints(1.0)

    def spawn(sc, remaining):
        spec = write_onnx_spec(work / "worker", sc, "onnxruntime", m["calib"], calibrations=onnx_backend.CALIBRATIONS,
                               constraints=constraints, use_latency=latency != "none", trials=trials, seed=0,
                               plan=plan, target="host", device=device, max_seconds=remaining)
        procs = launch_workers(spec, workers - 1)
        if killer:
            killer(procs)
        return procs

    dist = Distributed(plan, spawn=spawn if workers > 1 else None) if plan else None
    r = search_runtime(scorer, fmt="onnx", backend_name="onnxruntime", calibrations=onnx_backend.CALIBRATIONS,
                       trials=trials, constraints=constraints, seed=0, final_runs=20, distributed=dist)
    if dev is not None:
        dev.close()
    return r, dist, time.perf_counter() - start


def part_queue(root: Path, m: dict, n: int) -> dict:
    keygen(root / "client_key")
    devs = [start_sshd(root, name, root / "client_key") for name in ("fast", "slow", "doomed")]
    devs[1].python = slow_python(devs[1].dir / "python", 1.0)
    devs[2].python = dying_python(devs[2].dir / "python", after=4)
    toml = farm_toml(root / "queue.toml", [(d.name, d.uri(), "host") for d in devs], lock_dir=str(root / "locks"),
                     recheck_s=3600)
    try:
        farm = open_device(f"farm:{toml}", target=load_target("host"))
        start = time.perf_counter()
        results = farm.map([[Job(m["float"], "onnxruntime"), Job(m["int8"], "onnxruntime")]] * n, runs=20,
                           warmup=2)
        wall = time.perf_counter() - start
        measured = sum(all(lat.source == "measured" for lat in lats) for lats in results)
        out = {"asked": n, "measured": measured, "retried": farm.stats.retried, "lost": n - measured,
               "by_device": dict(farm.stats.by_device), "doomed_died": not devs[2].alive, "wall_s": round(wall, 1),
               "provenance_ok": all(lat.extra.get("farm", {}).get("device") and lat.device_id and lat.via
                                    for lats in results for lat in lats)}
    finally:
        for d in devs:
            d.stop()
    log(part="queue", **out)
    return out


def part_speed(root: Path, m: dict, trials: int, pairs: int) -> dict:
    from edgekit.study import StudyPlan, storage_url

    devs = [start_sshd(root, name, root / "client_key") for name in ("s-fast", "s-slow", "s-third")]
    devs[1].python = slow_python(devs[1].dir / "python", 1.0)
    toml = farm_toml(root / "speed.toml", [(d.name, d.uri(), "host") for d in devs], lock_dir=str(root / "locks2"))
    walls: dict[int, list[float]] = {1: [], 2: []}
    phases: dict[int, list[float]] = {1: [], 2: []}
    try:
        for p in range(pairs):
            for workers in (1, 2):  # interleaved: a slow phase of the shared machine hits both
                work = root / f"speed-{p}-{workers}"
                plan = StudyPlan(storage_url("", work / "study.db"), f"speed-{p}-{workers}", workers=workers)
                r, _, wall = search(m, work, plan=plan, workers=workers, device=f"farm:{toml}", trials=trials)
                walls[workers].append(wall)
                phase = _trial_phase(plan)
                phases[workers].append(phase)
                log(part="speed", pair=p, workers=workers, wall_s=round(wall, 1), trials_phase_s=round(phase, 1),
                    chosen=r.chosen.policy.label)
    finally:
        for d in devs:
            d.stop()
    ratios = [a / b for a, b in zip(walls[1], walls[2], strict=True)]
    phase_ratios = [a / b for a, b in zip(phases[1], phases[2], strict=True)]
    return {"wall_speedup_2_workers": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
            "wall_1_worker_s": [round(x, 1) for x in walls[1]], "wall_2_workers_s": [round(x, 1) for x in walls[2]],
            "trials_phase_speedup": round(statistics.median(phase_ratios), 3),
            "trials_phase_1_worker_s": [round(x, 1) for x in phases[1]],
            "trials_phase_2_workers_s": [round(x, 1) for x in phases[2]]}


def _trial_phase(plan) -> float:
    """Seconds from the first trial's start to the last trial's end (the part the workers share)."""
    import optuna

    from edgekit.study import complete_trials, open_storage

    trials = complete_trials(optuna.load_study(study_name=plan.name, storage=open_storage(plan)))
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def part_same(root: Path, m: dict, pg_url: str, trials: int) -> dict:
    from edgekit.study import StudyPlan, storage_url

    def key(r):
        return [(c.policy.key(), round(c.drop, 6), c.size_bytes) for c in r.candidates], r.chosen.policy.key()

    today = key(search(m, root / "same-mem", latency="none", trials=trials)[0])
    urls = {"sqlite": storage_url("", root / "same.db"), "postgresql": pg_url}
    same = {name: key(search(m, root / f"same-{name}", plan=StudyPlan(url, f"same-{name}"), latency="none",
                             trials=trials)[0]) == today for name, url in urls.items()}
    two = search(m, root / "same-two", plan=StudyPlan(urls["sqlite"], "same-two", workers=2), workers=2,
                 latency="none", trials=trials)[0]
    out = {"same_best_as_one_worker": all(same.values()), "same_by_storage": same,
           "two_workers_same_best": two.chosen.policy.key() == today[1]}
    log(part="same", **out)
    return out


def part_killed(root: Path, m: dict, pg_url: str, trials: int) -> dict:
    import optuna

    from edgekit.study import StudyPlan, complete_trials, open_storage

    devs = [start_sshd(root, name, root / "client_key") for name in ("k-fast", "k-second", "k-doomed")]
    devs[2].python = dying_python(devs[2].dir / "python", after=6)
    toml = farm_toml(root / "killed.toml", [(d.name, d.uri(), "host") for d in devs], lock_dir=str(root / "locks3"),
                     recheck_s=3600)
    plan = StudyPlan(pg_url, "killed", workers=3, heartbeat_s=1, grace_s=4)
    seen: dict = {}

    def killer(procs):
        def watch():
            storage = open_storage(plan)
            while True:
                try:
                    trials_now = optuna.load_study(study_name=plan.name, storage=storage).get_trials(deepcopy=False)
                except KeyError:
                    time.sleep(0.2)
                    continue
                mine = [t for t in trials_now if t.user_attrs.get("worker") == "w1"]
                done = [t.number for t in mine if t.state.name == "COMPLETE"]
                running = [t.number for t in mine if t.state.name == "RUNNING"]
                if done and running:
                    os.kill(procs[0].pid, signal.SIGKILL)
                    seen.update(done=done, running=running)
                    return
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()

    def state():
        complete = complete_trials(optuna.load_study(study_name=plan.name, storage=open_storage(plan)))
        return complete, {t.system_attrs.get("failed_trial") for t in complete} - {None}

    resumed = False
    try:
        r, dist, wall = search(m, root / "killed", plan=plan, workers=3, device=f"farm:{toml}", trials=trials,
                               killer=killer)
        complete, retried = state()
        if seen.get("running") and not set(seen["running"]) <= retried:
            # The budget was reached before the dead worker's trial went stale: resuming the study (one trial
            # more, one process) fails it and runs it again.
            time.sleep(plan.grace_s + 1)
            search(m, root / "killed-resume", plan=StudyPlan(plan.storage, plan.name, heartbeat_s=1, grace_s=4),
                   device=f"farm:{toml}", trials=len(complete) + 1)
            complete, retried = state()
            resumed = True
    finally:
        for d in devs:
            d.stop()
    numbers = {t.number for t in complete}
    unmeasured = [t.number for t in complete if (t.user_attrs.get("candidate") or {}).get("latency_source")
                  != "measured"]
    farm_devices = sorted({(t.user_attrs.get("candidate") or {}).get("extra", {}).get("farm_device") for t in complete}
                          - {None})
    out = {"killed_worker_trials_lost": len(set(seen.get("done", [])) - numbers), "killed_after": seen.get("done"),
           "killed_trial_retried": bool(seen.get("running")) and set(seen["running"]) <= retried,
           "retried_by_resuming": resumed,
           "trials_complete": len(complete), "search_trials_unmeasured": len(unmeasured),
           "doomed_died": not devs[2].alive, "farm_devices_used": farm_devices, "wall_s": round(wall, 1),
           "worker_exits": dist.workers}
    log(part="killed", **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--measurements", type=int, default=24)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(tempfile.mkdtemp(prefix="edgekit-farm-bench-"))
    pg = start_postgres()
    try:
        m = digits_onnx(root)
        queue = part_queue(root, m, a.measurements)
        same = part_same(root, m, pg.url, a.trials)
        killed = part_killed(root, m, pg.url, max(32, a.trials))
        speed = part_speed(root, m, a.trials, a.pairs)
        summary = {"devices": len(queue["by_device"]), "measurements": queue["asked"], "retried": queue["retried"],
                   "lost": queue["lost"] + killed["search_trials_unmeasured"],
                   "killed_worker_trials_lost": killed["killed_worker_trials_lost"],
                   "same_best_as_one_worker": same["same_best_as_one_worker"],
                   "wall_speedup_2_workers": speed["wall_speedup_2_workers"],
                   "storage": {"sqlite": "sqlite:///<tmp>/<study>.db", "postgresql": pg.url},
                   "queue": queue, "same": same, "killed": killed, "speed": speed, "trials": a.trials,
                   "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
        print(json.dumps(summary))
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
