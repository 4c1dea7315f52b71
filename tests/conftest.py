"""Shared fixtures. Heavy artifacts (mobilenet_v2 exports) are built once per session and shared by all tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = [sys.executable, "-m", "edgekit"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Runs `edgekit ARGS` in a subprocess, as a user would."""
    return subprocess.run([*EDGEKIT, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (training tests: the same result on a busy machine, no oversubscription)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, worker_id: str) -> Path:
    """`edgekit compress --target host` on the built-in default, run once for the session: `make test` runs on two
    workers (pytest-xdist, `--dist loadfile`), which share the run through a folder of the session and a lock; no
    test writes into it."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    out = shared / "digits-host"
    with open(shared / "digits-host.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "report.json").is_file():
            r = run_cli("compress", "--target", "host", "--out", str(out))
            assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def mnv2(tmp_path_factory):
    """torchvision mobilenet_v2 (seed 0 initialisation, eval) with its float ONNX and TFLite exports."""
    import torch
    import torchvision

    from edgekit.export import onnx as onnx_export
    from edgekit.export import tflite as tflite_export

    d = tmp_path_factory.mktemp("mnv2")
    torch.manual_seed(0)
    from edgekit.zoo import calibrate_batchnorm

    model = torchvision.models.mobilenet_v2().eval()
    # Untrained BN statistics make activations vanish (logits ~1e-9); set them from synthetic inputs as compress does.
    calibrate_batchnorm(model, np.random.default_rng(1).standard_normal((32, 3, 224, 224), dtype=np.float32))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    onnx_path = onnx_export.export(model, x, d / "mnv2.onnx")
    tflite_path = tflite_export.export(model, x, d / "mnv2.tflite")
    return {"model": model, "x": x, "onnx": onnx_path, "tflite": tflite_path, "dir": d}


def one_line_error(r, *needles: str) -> None:
    """A CLI run that failed as edgekit promises: exit code 2, one line on stderr, no traceback, naming `needles`."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def stage_record(report: dict, name: str) -> dict:
    """The record of the stage called `name` (compress puts a `check` stage first, so positions shift)."""
    return next(s for s in report["stages"] if s["name"] == name)

