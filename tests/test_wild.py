"""Models as they come: one format failing leaves the others; .tflite files without a signature def are quantised,
with sparse tensors are read and counted, with custom operators are refused in one line; a search's memory does not
grow with its trials."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import one_line_error, run_cli
from edgekit.importers import tflite_file

X_SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def plain_tflite(tmp_path_factory) -> Path:
    """The trained digits CNN as a float .tflite WITHOUT a signature def (as most of MediaPipe's files come)."""
    from edgekit.export import tflite as tflite_export
    from edgekit.zoo import trained_digits_cnn

    d = tmp_path_factory.mktemp("wild")
    with_sig = tflite_export.export(trained_digits_cnn(), np.zeros(X_SHAPE, np.float32), d / "signed.tflite")
    path = d / "plain.tflite"
    path.write_bytes(tflite_file.without_signature(with_sig.read_bytes()))
    assert tflite_file.has_signature(with_sig.read_bytes()) and not tflite_file.has_signature(path.read_bytes())
    return path


def test_one_format_failing_leaves_the_others(tmp_path: Path, monkeypatch):
    """The TFLite export fails, and the .pte file is written but its runtime cannot load it (as LiteRT's XNNPACK
    delegate refused PP-OCRv4's detector at 736x992): each is one line in `skipped`, the ONNX artifact goes on."""
    import edgekit
    from edgekit.errors import EdgekitError, InputError
    from edgekit.export import tflite
    from edgekit.stages import verify

    def broken(*args, **kwargs):
        raise EdgekitError("TFLite export failed: Could not guard on data-dependent expression (test)")

    def unloadable(path, runtime, *args, **kwargs):
        if Path(path).suffix == ".pte":
            raise InputError(f"ExecuTorch cannot load {path}: XNNPack delegate failed to reshape (test)")
        return run_artifact(path, runtime, *args, **kwargs)

    run_artifact = verify.run_artifact
    monkeypatch.setattr(tflite, "export", broken)
    monkeypatch.setattr(verify, "run_artifact", unloadable)
    result = edgekit.compress(None, "host", recipe="basic", out=tmp_path / "run")
    skipped = result.report["skipped"]
    assert [(s["stage"], s["format"]) for s in skipped] == [("export", "tflite"), ("verify", "pte")]
    assert all("\n" not in s["why"] for s in skipped) and "data-dependent" in skipped[0]["why"]
    assert "could not run it: ExecuTorch cannot load" in skipped[1]["why"]
    arts = {a["format"]: a for a in result.report["artifacts"]}
    assert set(arts) == {"onnx", "pte"} and arts["onnx"]["verification"]["passed"]
    assert not arts["pte"]["verification"]["passed"] and "reshape" in arts["pte"]["verification"]["error"]
    assert result.summary["artifact"] == arts["onnx"]["path"] and "p50_ms" not in (arts["pte"]["latency"] or {})
    assert "## Skipped" in (tmp_path / "run" / "report.md").read_text()


def test_a_tflite_file_without_a_signature_def_is_quantised(plain_tflite: Path, tmp_path: Path):
    import edgekit

    report = edgekit.compress(str(plain_tflite), "host", data="digits", out=tmp_path / "run",
                              overrides={"quantize": {"trials": 4, "max_seconds": 60}}).report
    assert report["route"]["name"] == "tflite-native" and "no signature def" in report["signature"]["source"]
    int8 = [a for a in report["artifacts"] if a["precision"] != "fp32"]
    assert int8 and all(a["verification"]["passed"] for a in int8)
    for a in int8:  # the quantised file looks like the one it came from: no signature def, the same tensor names
        content = (tmp_path / "run" / a["path"]).read_bytes()
        assert not tflite_file.has_signature(content) and a["signature"]["kept"]


def test_a_sparse_tflite_file_is_read_and_counted(tmp_path: Path):
    """Sparse (CSR) weights as XNNPACK runs them: counted by the values stored, never densified; the file compresses
    as it is (export, verify, measure)."""
    import torch

    from edgekit.export import tflite_sparse
    from edgekit.zoo import trained_digits_cnn

    model = trained_digits_cnn()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1):
                w = m.weight
                w[w.abs() < w.abs().flatten().quantile(0.8)] = 0.0
    path = tflite_sparse.export(model, np.zeros(X_SHAPE, np.float32), tmp_path / "sparse.tflite")
    w = tflite_file.weights(path.read_bytes())
    assert w.sparse_tensors >= 1 and w.stored < w.dense and w.nonzero <= w.stored
    import edgekit

    report = edgekit.compress(str(path), "host", recipe="basic", out=tmp_path / "run").report
    assert report["baseline"]["point"]["nonzeros"] < report["baseline"]["point"]["params"]
    assert report["artifacts"][0]["verification"]["passed"]


def test_a_custom_operator_is_refused_in_one_line(plain_tflite: Path, tmp_path: Path):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(plain_tflite.read_bytes()))
    code = model.operatorCodes[0]
    code.builtinCode, code.deprecatedBuiltinCode, code.customCode = 32, 32, b"Convolution2DTransposeBias"
    bad = tmp_path / "custom.tflite"
    bad.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    assert tflite_file.custom_operators(bad.read_bytes()) == ["Convolution2DTransposeBias"]
    one_line_error(run_cli("compress", str(bad), "--out", str(tmp_path / "run")), "custom operator",
                   "Convolution2DTransposeBias")


_GROWTH = """
import sys, tempfile, random
from pathlib import Path
import numpy as np
from edgekit.quant.evaluate import Scorer
from edgekit.quant.onnx_backend import OnnxQuantizer
from edgekit.quant.policy import FLOAT, INT8_CHANNEL, INT8_TENSOR, Policy

def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

path = sys.argv[1]
x = np.random.default_rng(0).standard_normal((96, 1, 8, 8)).astype(np.float32)
d = Path(tempfile.mkdtemp())
backend = OnnxQuantizer(path, x[:32], d)
scorer = Scorer(backend, "onnxruntime", Path(path), x[32:], None, d, timing_runs=5)
rng = random.Random(0)
seen = []
for i in range(60):
    p = Policy({la.name: rng.choice([INT8_CHANNEL, INT8_TENSOR, FLOAT]) for la in backend.layers},
               calibration=rng.choice(["minmax", "entropy"]), label=str(i))
    scorer.score(p, f"c{i}")
    if i in (9, 59):
        seen.append(rss())
print(seen[0], seen[1])
"""


def test_resident_memory_does_not_grow_with_the_trial_count(tmp_path: Path):
    """A search's candidates are made, scored and timed one after another; what one leaves behind (sessions,
    files) would show as memory growing with the trial count. 60 candidates: no more than 16 MB above 10."""
    from edgekit.export import onnx as onnx_export
    from edgekit.zoo import trained_digits_cnn

    path = onnx_export.export(trained_digits_cnn(), np.zeros(X_SHAPE, np.float32), tmp_path / "cnn.onnx")
    r = subprocess.run([sys.executable, "-c", _GROWTH, str(path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    after_10, after_60 = map(float, r.stdout.split())
    assert after_60 - after_10 < 16, (after_10, after_60)


def test_a_later_format_that_overruns_the_stage_budget_is_stopped_and_said(monkeypatch):
    """The first format's search bounds itself; a later one (a PT2E lowering that runs for most of an hour on a big
    model) is stopped at what is left of quantize.total_seconds, even inside code that swallows exceptions, and
    becomes one line in `failed` while the first format's result stands."""
    import signal
    import time
    from types import SimpleNamespace

    from edgekit.quant import run

    def quick(job):
        return "onnx result"

    def stuck(job):
        while True:
            try:
                time.sleep(0.01)  # a library loop that records a failed step and goes on
            except Exception:  # noqa: BLE001
                pass

    monkeypatch.setattr(run, "SEARCHES", {"onnx": quick, "pte": stuck})
    monkeypatch.setattr(run, "MIN_LATER_SECONDS", 0.5)
    monkeypatch.setattr(run, "latency_mode", lambda target, device: ("none", None, None))
    settings = SimpleNamespace(total_seconds=0.2, timing_runs=1, skip_failing_formats=True)
    job = SimpleNamespace(settings=settings, target=None, device=None, threads=1, metric=None, common={})
    handler, start = signal.getsignal(signal.SIGALRM), time.perf_counter()
    results, failed = run.quantize_formats(job, ["onnx", "pte"])
    assert time.perf_counter() - start < 5
    assert results == ["onnx result"] and list(failed) == ["pte"]
    assert failed["pte"].startswith("stopped after 0.5 s: not finished within what ONNX left"), failed
    assert signal.getsignal(signal.SIGALRM) is handler  # pytest-timeout's alarm is back
