"""Browser (wasm) target: onnxruntime-web in Node by default; headless Chromium where it is installed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import ROOT, run_cli
from edgekit.devices import browser
from edgekit.errors import InputError, RuntimeUnavailable
from edgekit.fileio import sha256_file
from edgekit.runtimes import load_runner
from edgekit.runtimes._web_bundle import RUNTIME_FILES, write_bundle
from edgekit.runtimes.onnxruntime_web import NodeOrtWebRunner, node_modules, package_version

HAS_CHROMIUM = browser.chromium_binary() is not None


@pytest.fixture(autouse=True)
def _short_warmup(monkeypatch):
    """Direct calls here check behaviour, not speed: skip the 1 s tier-up warm-up (the CLI run keeps it)."""
    monkeypatch.setattr(browser, "MIN_WARMUP_MS", 0.0)


def _small_model(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(x.reshape(len(x), -1) @ w + b, 0)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> dict:
    """A tiny ONNX graph (Flatten -> Gemm -> Relu) built directly, so no exporter time is spent."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 10), dtype=np.float32)
    b = rng.standard_normal(10, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["gemm"]),
         helper.make_node("Relu", ["gemm"], ["logits"])], "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    path = tmp_path_factory.mktemp("web") / "small.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)
    return {"path": path, "x": x, "ref": _small_model(x, w, b), "ref_fn": lambda v: _small_model(v, w, b)}


@pytest.fixture(scope="module")
def wasm_run(tmp_path_factory) -> dict:
    """`edgekit compress --target wasm` once: both engines where Chromium exists, else Node only."""
    out = tmp_path_factory.mktemp("runs") / "digits-wasm"
    device = [] if HAS_CHROMIUM else ["--device", "node"]
    r = run_cli("compress", "--target", "wasm", *device, "--set", "measure.runs=20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return {"out": out, "report": json.loads((out / "report.json").read_text())}


def test_onnxruntime_web_is_pinned_exactly():
    pkg = json.loads((ROOT / "package.json").read_text())
    pinned = pkg["dependencies"]["onnxruntime-web"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"pin onnxruntime-web exactly, got {pinned}"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == pinned == package_version()


def test_node_runner_matches_reference_and_keeps_one_process(small_onnx):
    runner = load_runner("onnxruntime-web", small_onnx["path"], 1)
    try:
        assert runner.input_shape == (1, 1, 8, 8)
        assert runner.runtime == f"onnxruntime-web {package_version()} (wasm, SIMD128)"
        pid = runner._proc.pid
        rng = np.random.default_rng(1)
        for _ in range(3):  # several calls, one process
            x = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)
            np.testing.assert_allclose(runner(x), small_onnx["ref_fn"](x), rtol=1e-5, atol=1e-5)
        assert runner._proc.pid == pid and runner._proc.poll() is None
        t = runner.time(small_onnx["x"], warmup=2, runs=7, min_warmup_ms=0)
        assert len(t["samples_ms"]) == 7 and all(s > 0 for s in t["samples_ms"]) and t["warmup_runs"] >= 2
        ops = runner.per_op(small_onnx["x"], warmup=1, runs=3)  # the profiler's trace does not break the protocol
        assert {o["type"] for o in ops} & {"Gemm", "FusedGemm"} and all(o["ms"] >= 0 for o in ops)
        np.testing.assert_allclose(runner(small_onnx["x"]), small_onnx["ref"], rtol=1e-5, atol=1e-5)
    finally:
        runner.close()
    assert runner._proc.poll() is not None  # closing ends the Node process


def test_node_runner_errors_are_one_line(small_onnx, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no ONNX model"):
        NodeOrtWebRunner(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot load"):
        NodeOrtWebRunner(bad)
    monkeypatch.setenv("EDGEKIT_NODE_MODULES", str(tmp_path / "none"))
    with pytest.raises(RuntimeUnavailable, match="make node-deps"):
        NodeOrtWebRunner(small_onnx["path"])


def test_bundle_is_self_contained(small_onnx, tmp_path):
    folder = write_bundle(small_onnx["path"], tmp_path / "site" / "model_web")
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "model.js", "index.html", "README.md", "manifest.json", *RUNTIME_FILES} == names
    dist = node_modules() / "onnxruntime-web" / "dist"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["runtime"]["version"] == package_version()
    for f in RUNTIME_FILES:  # the pinned runtime, byte for byte
        assert sha256_file(folder / f) == sha256_file(dist / f) == manifest["files"][f]
    assert manifest["files"]["model.onnx"] == sha256_file(small_onnx["path"])
    js = (folder / "model.js").read_text()
    assert "export async function run(input)" in js and '"inputShape": [1, 1, 8, 8]' in js
    assert "https://" not in js + (folder / "index.html").read_text()  # nothing from a CDN
    # Rewriting replaces the folder whole and leaves no temporary folders beside it.
    (folder / "stale.txt").write_text("x")
    write_bundle(small_onnx["path"], folder)
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in folder.parent.iterdir()] == ["model_web"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError):
        write_bundle(bad, tmp_path / "bad_web")
    assert not (tmp_path / "bad_web").exists()


def test_compress_wasm_writes_bundle_verified_in_node(wasm_run):
    report, out = wasm_run["report"], wasm_run["out"]
    (art,) = report["artifacts"]
    assert art["format"] == "web" and art["runtime"] == "onnxruntime-web"
    assert (out / art["path"] / "index.html").is_file() and (out / art["path"] / "model.onnx").is_file()
    v = art["verification"]
    assert v["passed"] and v["runtime"].startswith("onnxruntime-web ") and v["inputs"] == 450  # the quality split
    node = next(e for e in art["latencies"] if e["engine"] == "node")
    assert node["source"] == "measured" and node["runs"] == 20
    assert node["device"].startswith("node v")
    assert node["runtime"] == f"onnxruntime-web {package_version()} (wasm, SIMD128)"
    assert 0 < node["min_ms"] <= node["p50_ms"] <= node["p90_ms"]
    assert "raw" not in node  # samples live in the profile, not in report.json
    (node_profile,) = (out / "profiles" / "wasm").glob("*-via-node.json")
    prof = json.loads(node_profile.read_text())
    assert prof["source"] == "node" and prof["device"]["engine_version"].startswith("node v")
    assert prof["entries"][0]["timing"]["p50_ms"] == node["p50_ms"]
    ops = prof["entries"][0]["per_op"]  # from ORT's own profiler inside onnxruntime-web
    assert ops and all(o["ms"] >= 0 and "->" in o["signature"] for o in ops)
    assert any("Conv" in o["type"] for o in ops)  # the digits CNN's convolutions
    md = (out / "report.md").read_text()
    assert "Browser latency (onnxruntime-web)" in md and "| node |" in md


def test_plain_onnx_artifact_is_measured_in_node(small_onnx):
    (e,) = browser.measure_artifact(small_onnx["path"], small_onnx["x"], ("node",), warmup=2, runs=20)
    assert e["source"] == "measured" and e["engine"] == "node" and e["runs"] == 20
    np.testing.assert_allclose(np.asarray(e["raw"]["output"]).reshape(1, -1), small_onnx["ref"], atol=1e-5)


def test_unknown_browser_device_is_a_settings_error():
    from edgekit.devices import latency_source
    from edgekit.errors import SettingsError
    from edgekit.targets import load_target

    wasm = load_target("wasm")
    with pytest.raises(SettingsError, match="node, chromium"):
        latency_source(wasm, "firefox")
    with pytest.raises(SettingsError, match="node, chromium"):
        latency_source(wasm, "ssh://pi@board")
    with pytest.raises(SettingsError, match="measures the browser target"):
        latency_source(load_target("host"), "node")
    assert latency_source(wasm, None).devices == ("node", "chromium")
    assert latency_source(wasm, None).primary == "chromium"


@pytest.mark.browser
@pytest.mark.skipif(not HAS_CHROMIUM, reason="headless Chromium is not installed")
def test_compress_wasm_reports_chromium_as_primary(wasm_run):
    (art,) = wasm_run["report"]["artifacts"]
    engines = {e["engine"]: e for e in art["latencies"]}
    assert set(engines) == {"node", "chromium"}
    c = engines["chromium"]
    assert c["source"] == "measured" and re.match(r"chromium \d+\.\d+", c["device"])
    assert art["latency"] == c  # the primary
    assert c["output_max_abs_diff_vs_node"] <= 1e-5  # same runtime, same input, same answer
    assert list((wasm_run["out"] / "profiles" / "wasm").glob("*-via-chromium.json"))
    assert "| chromium |" in (wasm_run["out"] / "report.md").read_text()


@pytest.mark.browser
@pytest.mark.skipif(not HAS_CHROMIUM, reason="headless Chromium is not installed")
def test_chromium_page_runs_the_bundle_and_reports(small_onnx, tmp_path):
    folder = write_bundle(small_onnx["path"], tmp_path / "model_web")
    r = browser.time_in_chromium(folder, small_onnx["x"], warmup=2, runs=20)
    assert len(r["samples_ms"]) == 20 and "HeadlessChrome" in r["user_agent"]
    assert r["onnxruntime_web"] == package_version()
    np.testing.assert_allclose(np.asarray(r["output"]).reshape(1, -1), small_onnx["ref"], atol=1e-5)


def test_broken_chromium_is_reported_not_hidden(small_onnx, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CHROMIUM", "/bin/false")
    node, chromium = browser.measure_artifact(small_onnx["path"], small_onnx["x"], ("node", "chromium"),
                                              warmup=2, runs=20)
    assert node["source"] == "measured"
    assert chromium["source"] == "none" and "reported no result" in chromium["reason"]
    with pytest.raises(RuntimeUnavailable, match="exit code 1"):  # asked for explicitly: an error
        browser.measure_artifact(small_onnx["path"], small_onnx["x"], ("chromium",), warmup=2, runs=20)
