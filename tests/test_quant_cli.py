"""The quant recipe end to end through the CLI, report.json's summary, and `--fail-on` gates passing and failing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def quant_run(digits_run, tmp_path_factory) -> Path:
    """The quant recipe on a copy of the shared digits run: baseline and export are resumed, not redone."""
    out = tmp_path_factory.mktemp("quant") / "run"
    shutil.copytree(digits_run, out)
    r = run_cli("compress", "--target", "host", "--recipe", "quant", "--out", str(out),
                "--set", "quantize.formats=[onnx]", "--set", "quantize.trials=8", "--set", "quantize.eval_inputs=200",
                "--set", "quantize.max_quality_drop=5", "--set", "quantize.final_runs=30",
                "--set", "check.enabled=false")  # a new budget re-runs every stage; check is tests/test_check.py's
    assert r.returncode == 0, r.stderr
    return out


def test_quant_run_writes_verified_int8_artifacts_and_sections(quant_run):
    report = json.loads((quant_run / "report.json").read_text())
    arts = {a["path"]: a for a in report["artifacts"]}
    int8 = arts["artifacts/model_int8.onnx"]
    assert int8["precision"] == "int8" and int8["reference"] == "float"
    assert int8["verification"]["passed"] and int8["latency"]["source"] == "measured"
    assert int8["size_bytes"] < arts["artifacts/model_fp32.onnx"]["size_bytes"]
    stage = next(s for s in report["stages"] if s["name"] == "quantize")
    search = stage["details"]["searches"][0]
    assert search["evaluated"] >= 8 and search["chosen"]["drop"] <= 5
    assert len(search["sensitivity"]) == 5
    policy = json.loads((quant_run / "artifacts" / "quant_policy_onnx.json").read_text())
    assert policy["edgekit_policy"] == 1 and len(policy["layers"]) == 5
    md = (quant_run / "report.md").read_text()
    assert "## Summary" in md and "## Quantisation: onnx" in md and "quant_pareto.png" in md
    assert (quant_run / "quant_pareto.png").stat().st_size > 1000
    s = report["summary"]  # anchored at the model as loaded; after = the recommended artifact's verified quality
    after = next(a for a in report["artifacts"] if a["path"] == s["artifact"])
    baseline = next(st for st in report["stages"] if st["name"] == "baseline")
    assert s["quality_metric"] == "accuracy" and s["quality_before"] == baseline["metrics"]["accuracy"]
    assert s["quality_drop"] == pytest.approx(100 * (s["quality_before"] - after["verification"]["quality"]["value"]))
    assert s["quality_drop"] <= 5 and s["budget"] == 5  # no --max-quality-drop: quantize's own constraint
    assert s["size_after_bytes"] == after["size_bytes"] and s["p50_ms"] > 0


def test_fail_on_gates_pass_and_fail_through_the_cli(quant_run):
    drop = json.loads((quant_run / "report.json").read_text())["summary"]["quality_drop"]
    ok = run_cli("report", str(quant_run), "--format", "md", "--fail-on", f"quality_drop>{drop + 1}",
                 "--fail-on", "p50_ms>1000")
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("report", str(quant_run), "--format", "md", "--fail-on", f"quality_drop>{drop - 1}",
                  "--fail-on", "p50_ms>1000")
    assert bad.returncode == 1
    assert "quality_drop" in bad.stderr and "p50_ms" not in bad.stderr
    lat = run_cli("report", str(quant_run), "--fail-on", "p50_ms>0")
    assert lat.returncode == 1 and "summary.p50_ms" in lat.stderr
    missing = run_cli("report", str(quant_run), "--fail-on", "no_such_field>1")
    assert missing.returncode == 1 and "no field" in missing.stderr
    malformed = run_cli("report", str(quant_run), "--fail-on", "quality_drop>>1")
    assert malformed.returncode == 2 and malformed.stderr.count("\n") == 1


def test_quantize_settings_are_validated(tmp_path):
    r = run_cli("compress", "--recipe", "quant", "--out", str(tmp_path / "x"), "--set", "quantize.formats=[wasm]")
    assert r.returncode == 2 and "no INT8 backend" in r.stderr
    assert not (tmp_path / "x" / "report.json").exists()
