"""sparsify: TFLite sparse tensors + DENSIFY, the XNNPACK arrangement, one-shot pruning, and the stage in a run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import stage_record
from edgekit.errors import SettingsError


def tiny_mobilenet():
    """A mobilenet-shaped CNN small enough for tests: 3x3/s2 stem on 3 channels, depthwise + 1x1 blocks, MEAN, FC."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(),
        nn.Conv2d(8, 32, 1), nn.ReLU6(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), nn.ReLU6(),
        nn.Conv2d(32, 64, 1), nn.ReLU6(),
        nn.Conv2d(64, 64, 1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    net.input_shape = (1, 3, 32, 32)
    return net.eval()


def _decode_csr(params, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Dense filter from TFLite sparsity parameters (traversal [0,1,2,3], last axis CSR), written independently."""
    dm = params.dimMetadata[3]
    seg, idx = np.asarray(dm.arraySegments.values), np.asarray(dm.arrayIndices.values)
    rows = int(np.prod(shape[:3]))
    out = np.zeros((rows, shape[3]), np.float32)
    for r in range(rows):
        for k in range(seg[r], seg[r + 1]):
            out[r, idx[k]] = values[k]
    return out.reshape(shape)


def test_sparse_filter_encoding_round_trips():
    from edgekit.export.tflite_sparse import sparsity_parameters

    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 1, 1, 300)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    params, values = sparsity_parameters(w)
    assert list(params.traversalOrder) == [0, 1, 2, 3]
    assert [d.format for d in params.dimMetadata] == [0, 0, 0, 1]  # DENSE, DENSE, DENSE, SPARSE_CSR
    assert len(values) == np.count_nonzero(w)
    np.testing.assert_array_equal(_decode_csr(params, values, w.shape), w)


def _zero_1x1_filters(src, dst, fraction: float) -> int:
    """Zeros the smallest `fraction` of every 1x1 CONV_2D filter inside a TFLite file (a masked model, no export)."""
    from edgekit.export import tflite_sparse as ts

    model = ts.read_model(src)
    g = model.subgraphs[0]
    n = 0
    for op in g.operators:
        if ts.op_name(model, op) != "CONV_2D":
            continue
        w = ts.constant(model, g, int(op.inputs[1]))
        if w is None or w.shape[1:3] != (1, 1):
            continue
        w = w.copy()
        w.flat[np.argsort(np.abs(w), axis=None)[: int(fraction * w.size)]] = 0
        model.buffers[g.tensors[int(op.inputs[1])].buffer].data = np.frombuffer(w.tobytes(), np.uint8).copy()
        n += 1
    dst.write_bytes(ts.model_bytes(model))
    return n


def test_sparse_mnv2_is_smaller_exact_and_meets_xnnpack_rules(mnv2, tmp_path):
    from edgekit import rules
    from edgekit.export import tflite_sparse
    from edgekit.runtimes import load_runner
    from edgekit.targets import load_target

    masked, sparse = tmp_path / "masked.tflite", tmp_path / "sparse.tflite"
    n_1x1 = _zero_1x1_filters(mnv2["tflite"], masked, 0.9)
    info = tflite_sparse.rewrite(masked, sparse)
    assert info["sparse_filters"] == n_1x1 == 34  # mobilenet_v2 has 34 1x1 convolutions
    assert info["mean_reshape_fc"] == 1
    assert info["size_sparse_bytes"] <= 0.55 * info["size_dense_bytes"]

    x = mnv2["x"]
    ref = np.asarray(load_runner("litert", masked)(x))
    got = np.asarray(load_runner("litert", sparse)(x))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))

    g = rules.read_tflite(sparse)
    kinds = [op.kind for op in g.ops]
    assert kinds.count("DENSIFY") == n_1x1
    mean = next(op for op in g.ops if op.kind == "MEAN")
    assert mean.keep_dims and g.ops[g.consumers[mean.outputs[0]][0]].kind == "RESHAPE"

    arm = rules.check_graph(g, load_target("rpi4"))[0]
    assert arm.sparse and arm.structure_ok and arm.zero_fraction >= 0.89
    assert {lv.name for lv in arm.layers if lv.sparse} >= {"features.1.conv.1", "features.18.0"}
    host = load_target("host")
    litert_host = rules.check_graph(g, host)[0]
    if "avx" in host.simd:
        assert not litert_host.sparse and [b["layer"] for b in litert_host.blockers] == ["CPU"]
        assert "not on this AVX host" in litert_host.summary and "ARM and WASM" in litert_host.summary
    ort = next(v for v in rules.check_graph(g, load_target("rpi4")) if v.runtime == "onnxruntime")
    assert not ort.sparse and "no sparse convolution kernels" in ort.blockers[0]["why"]

    # The dense masked file, as litert-torch writes it, fails the FC rule that the rewrite fixes.
    before = rules.check_graph(rules.read_tflite(masked), load_target("rpi4"))[0]
    assert not before.sparse
    assert any("FULLY_CONNECTED" in b["why"] for b in before.blockers)


def test_magnitude_prune_reaches_the_fraction_on_candidates_only():
    from edgekit.stages.sparsify import candidate_convs, magnitude_prune

    net = tiny_mobilenet()
    cands = candidate_convs(net)
    assert set(cands) == {"4", "8", "10"}  # the 1x1 convolutions, not the stem or the depthwise ones
    reached = magnitude_prune(cands, 0.9)
    for name, frac in reached.items():
        w = cands[name].weight
        assert frac == pytest.approx(round(0.9 * w.numel()) / w.numel())
    assert float((net[0].weight == 0).float().mean()) == 0.0


def test_settings_are_validated():
    from edgekit.stages.sparsify import Settings

    with pytest.raises(SettingsError, match="oneshot_sparsity"):
        Settings(oneshot_sparsity=1.0)
    with pytest.raises(SettingsError, match="min_zero_fraction"):
        Settings(min_zero_fraction=-0.1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """compress with the sparse stage on the tiny CNN for rpi4 (its LiteRT runs sparse there)."""
    from edgekit import api

    recipe = {"stages": [{"baseline": {}}, {"sparsify": {"oneshot_sparsity": 0.8}},
                         {"export": {"formats": ["tflite"]}}, {"verify": {"inputs": 4}}]}
    out = tmp_path_factory.mktemp("sparse") / "run"
    report = api.compress("test_sparsify:tiny_mobilenet", "rpi4", recipe=recipe, input_shape=(1, 3, 32, 32), out=out,
                          trust_code=True)
    return out, report


def test_sparsify_stage_in_a_run(tiny_run):
    out, report = tiny_run
    sparse = [a for a in report["artifacts"] if a.get("sparse")]
    assert len(sparse) == 1 and sparse[0]["verification"]["passed"]
    stage = next(s for s in report["stages"] if s["name"] == "sparsify")
    m = stage["metrics"]
    assert m["eligible_layers"] == 3 and m["eligible_zero_fraction"] == pytest.approx(0.8, abs=0.01)
    assert m["runs_sparse"] == {"litert": True, "onnxruntime": False, "executorch": False}
    assert m["sparse_vs_dense_max_abs_err"] <= 1e-5
    section = next(s for s in report["sections"] if s["title"].startswith("Sparse inference"))
    assert "ONNX Runtime has no sparse convolution kernels" in section["markdown"]
    dense = next(a for a in report["artifacts"] if a["path"].endswith("model_fp32.tflite"))
    assert dense["verification"]["passed"]  # the dense export of the same masked model agrees too


def test_sparsify_without_eligible_layers_writes_no_sparse_artifact(tmp_path):
    from edgekit import api

    recipe = {"stages": [{"sparsify": {"oneshot_sparsity": 0.9}}]}
    report = api.compress("edgekit:digits_mlp", "rpi4", recipe=recipe, out=tmp_path / "run")
    assert report["artifacts"] == [] and not list((tmp_path / "run" / "artifacts").glob("*.tflite"))
    stage = stage_record(report, "sparsify")
    assert "no convolution" in stage["details"]["skipped"]
    assert stage["params_nonzero"] == stage["params_total"]  # nothing pruned where nothing can run sparse


@pytest.mark.browser
def test_sparse_tflite_runs_in_the_browser_runtime(tiny_run):
    """The TFLite WebAssembly runtime (tfjs-tflite, XNNPACK) loads the sparse file and agrees with the dense one."""
    from edgekit.devices.tflite_web import time_tflite_in_chromium
    from edgekit.errors import RuntimeUnavailable
    from edgekit.runtimes import load_runner

    out, _ = tiny_run
    dense, sparse = out / "artifacts" / "model_fp32.tflite", out / "artifacts" / "model_sparse.tflite"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    try:
        r = time_tflite_in_chromium([dense, sparse], x, warmup=1, runs=3)
    except RuntimeUnavailable as e:
        pytest.skip(str(e))
    assert [len(s) for s in r["samples_ms"]] == [3, 3]
    ref = np.asarray(load_runner("litert", dense)(x)).ravel()
    for got in r["outputs"]:
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))
