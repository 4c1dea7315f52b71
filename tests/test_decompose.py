"""CP / Tucker-2 decomposition: exact sequences, parameter formulas and budgets, the stage and its resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import stage_record
from edgekit.adapters import decomposition as dec
from edgekit.errors import SettingsError
from edgekit.zoo import digits_cnn

GEOMETRIES = [dict(stride=1, padding=1), dict(stride=2, padding=(1, 2), dilation=(1, 2)), dict(stride=(2, 1))]


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("method", ["cp", "tucker"])
def test_sequence_computes_its_reconstructed_kernel(method, geo):
    """The conv sequence equals one conv with the reconstructed kernel, for any stride / padding / dilation."""
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 10, (3, 5), bias=True, **geo)
    ranks = (7,) if method == "cp" else (6, 5)
    seq = dec.decompose_conv(conv, method, ranks, n_iter=10)
    x = torch.randn(2, 12, 11, 13)
    dense = nn.functional.conv2d(x, dec.reconstruct(seq), conv.bias, conv.stride, conv.padding, conv.dilation)
    with torch.no_grad():
        assert torch.allclose(seq(x), dense, atol=1e-5)
    assert sum(p.numel() for p in seq.parameters()) == dec.params_after(method, conv.weight.shape, ranks) + 10
    if method == "cp":
        assert [m.groups for m in seq] == [1, 7, 7, 1]  # 1x1 -> depthwise Kx1 -> depthwise 1xK -> 1x1
        assert [m.kernel_size for m in seq] == [(1, 1), (3, 1), (1, 5), (1, 1)]


def test_full_rank_tucker_is_exact_and_cp_error_falls_with_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3)
    seq = dec.decompose_conv(conv, "tucker", (8, 6))
    assert torch.allclose(dec.reconstruct(seq), conv.weight, atol=1e-5)
    errs = []
    for r in (2, 8, 32):
        seq = dec.decompose_conv(conv, "cp", (r,), n_iter=100)
        errs.append(float((dec.reconstruct(seq) - conv.weight).norm() / conv.weight.norm()))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("shape", [(32, 16, 3, 3), (64, 32, 3, 3), (512, 512, 3, 3), (64, 3, 7, 7), (8, 4, 5, 5)])
@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.1])
def test_ranks_respect_parameter_budget(shape, ratio):
    o, i, kh, kw = shape
    r_cp, = dec.ranks_for_ratio("cp", shape, ratio)
    assert dec.cp_params(shape, r_cp) == r_cp * (i + kh + kw + o)
    r_in, r_out = dec.ranks_for_ratio("tucker", shape, ratio)
    assert dec.tucker_params(shape, r_in, r_out) == i * r_in + r_in * r_out * kh * kw + r_out * o
    budget = ratio * math.prod(shape)
    if r_cp > 1:  # rank 1 is the floor even when it exceeds the budget
        assert dec.cp_params(shape, r_cp) <= budget < dec.cp_params(shape, r_cp + 1)
    if min(r_in, r_out) > 1:
        assert dec.tucker_params(shape, r_in, r_out) <= budget


def test_stage_plan_skips_what_it_cannot_shrink():
    from edgekit.stages.decompose import Settings, plan_layers

    model = digits_cnn()
    plan = plan_layers(model, Settings(method="cp", ratio=0.3, min_params=0))
    assert [p.name for p in plan] == ["0", "3", "7"]  # the 1x1 conv "10" is not a KxK conv
    assert [p.name for p in plan_layers(model, Settings(method="cp", ratio=0.3))] == ["3", "7"]  # "0": 144 weights
    assert all(p.params_after <= 0.3 * p.params_before or p.ranks == (1,) for p in plan)
    assert plan_layers(model, Settings(method="tucker", rank=1000)) == []  # full ranks would not shrink anything
    with pytest.raises(SettingsError):
        Settings(method="svd")
    with pytest.raises(SettingsError):
        Settings(ratio=0)
    with pytest.raises(SettingsError):
        Settings(a_priori=True, epochs=0)
    with pytest.raises(SettingsError):
        Settings(norms="sometimes")


def test_latency_budget_plan_uses_measured_candidates():
    from edgekit.stages.decompose import Settings, plan_layers

    model = digits_cnn()
    x = np.zeros((1, 1, 8, 8), np.float32)
    plan = plan_layers(model, Settings(method="tucker", budget="latency", ratio=1.0), x)
    # With the whole original latency allowed, each layer that any candidate beats gets one of the candidates.
    for p in plan:
        assert p.ranks in dec.candidate_ranks("tucker", p.shape)
        assert p.params_after < p.params_before


def test_decompose_stage_runs_exports_and_resumes(tmp_path):
    import onnx

    from edgekit import api

    out = tmp_path / "run"
    stage = {"decompose": {"method": "cp", "ratio": 0.15, "epochs": 2, "n_iter": 20}}
    rep = api.compress(None, "host", recipe={"stages": [stage, {"export": {"formats": ["onnx"]}}]}, out=out)
    rec = stage_record(rep, "decompose")
    assert rec["metrics"]["conv_params_before"] / rec["metrics"]["conv_params_after"] >= 3
    assert 0 <= rec["metrics"]["accuracy"] <= 1
    graph = onnx.load(str(out / "artifacts" / "model_fp32.onnx")).graph
    groups = [a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    ranks = [p["ranks"][0] for p in rec["details"]["plan"]]
    assert sorted(g for g in groups if g > 1) == sorted(r for r in ranks * 2 if r > 1)  # 2 depthwise per layer
    assert sum(n.op_type == "Conv" for n in graph.node) == 4 + 3 * len(ranks)  # 4 convs per decomposed one
    # Resume: decompose is reused, restore rebuilds its structure and the checkpoint loads into it.
    rep2 = api.compress(None, "host", recipe={"stages": [stage, {"baseline": {}}]}, out=out)
    assert stage_record(rep2, "decompose")["seconds"] == rec["seconds"]
    assert stage_record(rep2, "baseline")["metrics"]["accuracy"] == rec["metrics"]["accuracy"]


def test_a_priori_builds_fresh_structure_and_trains_it():
    """a_priori: the decomposed structure with fresh weights, trained from scratch on labels (small, fast)."""
    from types import SimpleNamespace

    from edgekit.data import DataBundle, digits
    from edgekit.stages import decompose

    ds = digits()
    small = DataBundle("digits-small", ds.x_train[:400], ds.y_train[:400], ds.x_test[:200], ds.y_test[:200], "")
    records: dict = {}
    ctx = SimpleNamespace(data=small, example_input=small.x_test[:1], threads=1, progress=None,
                          record=lambda **kw: records.update(kw), add_section=lambda *a: None)
    torch.manual_seed(0)
    model = digits_cnn()
    settings = decompose.Settings(method="tucker", ratio=0.3, a_priori=True, epochs=10, lr=3e-3)
    out = decompose.run(model, settings, ctx)
    assert isinstance(out.get_submodule("7"), nn.Sequential)  # structure built before training
    m = records["metrics"]
    assert m["accuracy_before"] < 0.3 and m["accuracy_decomposed"] < 0.3  # untrained digits_cnn, fresh layers
    assert m["accuracy"] > 0.6  # and training from scratch learned the task
