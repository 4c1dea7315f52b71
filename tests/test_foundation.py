"""The foundation: compress end to end on the built-in default, the run folder contract, resume, targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from edgekit.fileio import sha256_file


def test_import_and_help_stay_light():
    """`import edgekit` and `edgekit --help` must not pull in torch or the runtimes."""
    code = ("import sys, edgekit, edgekit.cli; edgekit.cli._register_commands(); "
            "heavy = [m for m in ('torch', 'onnxruntime', 'ai_edge_litert', 'litert_torch', 'tvm', 'nncf') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("compress", "targets", "zoo", "report"):
        assert cmd in r.stdout


def test_default_run_writes_verified_measured_artifacts(digits_run: Path):
    """The default (`--recipe auto` on the host): no sparse runtime here, so the plan is the joint channel-pruning +
    INT8 search (ONNX Runtime, LiteRT), then the INT8 policy search for ExecuTorch, which the joint search does not
    build."""
    report = json.loads((digits_run / "report.json").read_text())
    assert report["schema"] == 2 and report["model"] == "edgekit:digits_cnn" and report["target"] == "host"
    assert [s["name"] for s in report["stages"]] == ["check", "baseline", "joint", "export", "quantize", "verify",
                                                       "measure"]
    assert report["stages"][1]["metrics"]["accuracy"] > 0.9  # trained on real digits
    peaks = [s["peak_rss_mb"] for s in report["stages"]]  # the process's peak so far: it never falls
    assert peaks[0] > 100 and peaks == sorted(peaks)
    # the CNN's weights are far below edgekit.child.CHILD_ABOVE_MB: converted in-process (tests/test_child.py forks)
    assert all(s.get("children") is None for s in report["stages"])  # report.json leaves out empty fields
    assert "| check |" in (digits_run / "report.md").read_text() and "peak memory MB" in (
        digits_run / "report.md").read_text()
    plan = {t["name"]: t for t in report["plan"]["techniques"]}
    assert plan["joint"]["used"] and not plan["prune"]["used"] and "x86" in plan["prune"]["why"]
    assert plan["quantize"]["used"] and "joint search does not build" in plan["quantize"]["why"]
    assert report["stages"][4]["settings"]["formats"] == ["pte"]
    # one quality budget, met with one standard error of margin by both searches; candidates trained by steps
    assert report["stages"][2]["settings"]["confidence"] == report["stages"][4]["settings"]["confidence"] == 1.0
    assert report["stages"][2]["settings"]["finetune_steps"] == 1000
    assert all("drop_se" in c for c in report["stages"][2]["details"]["candidates"])
    check = report["stages"][0]["details"]["findings"]
    assert {f["runtime"] for f in check} == {"litert", "onnxruntime", "executorch"}
    assert not any(f["sparse"] for f in check)  # the digits CNN's stem blocks XNNPACK's sparse path
    arts = report["artifacts"]
    assert {(a["format"], a["precision"]) for a in arts} >= {("onnx", "fp32"), ("tflite", "fp32"), ("pte", "fp32"),
                                                             ("pte", "int8")}
    assert any(a["path"].startswith("artifacts/model_joint.") for a in arts)  # the joint search's choice
    for art in arts:
        path = digits_run / art["path"]
        assert path.is_file() and path.stat().st_size == art["size_bytes"]
        assert sha256_file(path) == art["sha256"]
        v = art["verification"]
        assert v["passed"] is True and v["quality"]["inputs"] == 450
        if art["precision"] == "fp32":
            assert v["max_abs_err"] <= v["tolerance"]["max_abs_err_limit"] and v["top1_agreement"] >= 0.98
        lat = art["latency"]
        assert lat["source"] == "measured" and lat["device"].startswith("host:")
        assert lat["runs"] >= 20 and 0 < lat["p50_ms"] <= lat["p90_ms"]
    s = report["summary"]  # anchored at the model as loaded, after = the recommended artifact
    assert s["quality_before"] == report["stages"][1]["metrics"]["accuracy"]
    rec = next(a for a in arts if a["path"] == s["artifact"])
    assert s["quality_after"] == rec["verification"]["quality"]["value"]
    assert s["quality_drop"] == pytest.approx(100 * (s["quality_before"] - s["quality_after"]), abs=1e-3)
    assert s["quality_drop"] <= s["budget"] == 1.0 and s["budget_met"] is True
    assert s["p50_ms_after"] == min(a["latency"]["p50_ms"] for a in arts
                                    if 100 * (s["quality_before"] - a["verification"]["quality"]["value"]) <= 1.0)
    before = report["baseline"].get("artifacts") or arts  # the loaded model's float artifacts when a stage changed it
    assert s["p50_ms_before"] == min(a["latency"]["p50_ms"] for a in before if a["precision"] == "fp32")
    listed = {a["path"] for a in arts} | {f["path"] for f in report["files"]}
    listed |= {c for a in arts for c in a.get("companions") or []}  # e.g. a .pte's sidecar JSON
    assert {p.relative_to(digits_run).as_posix() for p in (digits_run / "artifacts").iterdir()} == listed
    md = (digits_run / "report.md").read_text()
    assert "model_fp32.onnx" in md and "measured" in md and "## Plan" in md and "## Chain" in md
    assert (digits_run / "artifacts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(digits_run.rglob("*.tmp")), "temporary files left behind"


def test_second_run_reuses_finished_stages(digits_run: Path, tmp_path: Path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(digits_run, out)
    before = json.loads((out / "report.json").read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "artifacts").iterdir()}
    r = run_cli("compress", "--target", "host", "--out", str(out))
    assert r.returncode == 0, r.stderr
    after = json.loads((out / "report.json").read_text())
    assert [s["fingerprint"] for s in after["stages"]] == [s["fingerprint"] for s in before["stages"]]
    assert [s["seconds"] for s in after["stages"]] == [s["seconds"] for s in before["stages"]]  # reused, not re-run
    assert {p: p.stat().st_mtime_ns for p in (out / "artifacts").iterdir()} == mtimes
    # A changed setting re-runs that stage and the ones after it, not the ones before.
    r = run_cli("compress", "--target", "host", "--out", str(out), "--set", "measure.runs=25")
    assert r.returncode == 0, r.stderr
    changed = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in before["stages"]]
    verify, measure = names.index("verify"), names.index("measure")
    assert changed["stages"][verify]["seconds"] == before["stages"][verify]["seconds"]
    assert changed["stages"][measure]["fingerprint"] != before["stages"][measure]["fingerprint"]
    assert all(a["latency"]["runs"] == 25 for a in changed["artifacts"])


def test_rpi4_run_reports_no_device_latency(tmp_path: Path):
    out = tmp_path / "rpi4"
    r = run_cli("compress", "--target", "rpi4", "--recipe", "basic", "--out", str(out), "--set",
                "export.formats=[onnx]")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["threads"] == 4
    (art,) = report["artifacts"]
    assert art["verification"]["passed"] is True
    assert art["latency"]["source"] == "none" and "p50_ms" not in art["latency"]
    assert "rpi4" in art["latency"]["reason"]


def test_targets_and_zoo_commands():
    r = run_cli("targets")
    assert r.returncode == 0
    for name in ("host", "rpi4", "android-arm64", "wasm"):
        assert name in r.stdout
    r = run_cli("zoo", "--filter", "mobilenet_v2")
    assert r.returncode == 0 and "torchvision:mobilenet_v2" in r.stdout.split()


def test_report_command_rerenders_markdown(digits_run: Path, tmp_path: Path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(digits_run, out)
    (out / "report.md").unlink()
    r = run_cli("report", str(out))
    assert r.returncode == 0, r.stderr
    assert "edgekit report" in (out / "report.md").read_text()


def test_onnx_and_pt2_models_compress(tmp_path: Path):
    """A user's own .onnx and torch.export .pt2 files go through the pipeline and match their source."""
    import numpy as np
    import torch

    from edgekit.export import onnx as onnx_export
    from edgekit.zoo import digits_cnn

    torch.manual_seed(3)
    model = digits_cnn().eval()
    x = np.zeros((1, 1, 8, 8), np.float32)
    onnx_export.export(model, x, tmp_path / "user.onnx")
    torch.export.save(torch.export.export(model, (torch.as_tensor(x),)), tmp_path / "user.pt2")
    for name in ("user.onnx", "user.pt2"):
        out = tmp_path / f"run-{name}"
        r = run_cli("compress", str(tmp_path / name), "--target", "host", "--data", "digits", "--out", str(out),
                    "--recipe", "basic", "--set", "export.formats=[onnx]")
        assert r.returncode == 0, r.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["input_shape"] == [1, 1, 8, 8]
        assert report["weights"] == f"file:{tmp_path / name}"
        assert all(a["verification"]["passed"] for a in report["artifacts"])
