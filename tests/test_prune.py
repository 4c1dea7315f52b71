"""Lottery-ticket prune stage: patterns, layer selection (incl. target rules), IMP invariants, and resume after a
real SIGKILL ending bit-for-bit where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import EDGEKIT, run_cli
from edgekit.data import digits
from edgekit.errors import SettingsError
from edgekit.masks import Mask
from edgekit.prune.imp import next_mask, run_imp
from edgekit.prune.layers import plan_layers
from edgekit.prune.patterns import parse_pattern
from edgekit.stages.prune import Settings
from edgekit.targets import load_target
from edgekit.zoo import digits_cnn, digits_mlp

FAST = Settings(rounds=2, epochs=2, batch_size=128, device="cpu", target_rules="off")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one thread: the same reductions on any machine, no oversubscription


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return digits_mlp()


def test_settings_are_validated():
    for bad in ({"rate": 1.0}, {"rate": 0}, {"ranking": "mixed"}, {"pattern": "3x3"}, {"pattern": "4:2"},
                {"epochs": 0}, {"rewind_step": -1}, {"layers": "attention"}, {"last_layer_scale": 5.0},
                {"target_rules": "maybe"}):
        with pytest.raises(SettingsError):
            Settings(**bad)
    model = _mlp()
    with pytest.raises(SettingsError, match="not conv or linear"):
        plan_layers(model, replace(FAST, layers=("0",)), None, (1, 1, 8, 8), parse_pattern("unstructured"))


def test_unstructured_round_removes_the_smallest_surviving_weights():
    model = _mlp()
    rates = {"1.weight": 0.2, "3.weight": 0.2, "5.weight": 0.1}
    mask = Mask.ones(model, rates)
    new = next_mask(model, mask, rates, parse_pattern("unstructured"))
    new.check_within(mask)
    for name, rate in rates.items():
        w, keep = dict(model.named_parameters())[name].detach().abs(), new[name]
        assert int((~keep).sum()) == round(rate * keep.numel())
        assert w[~keep].max() <= w[keep].min()  # magnitude order
    # The next round ranks only survivors: it removes 20% of what is left, never revives.
    model.get_parameter("1.weight").data.mul_(new["1.weight"])
    newer = next_mask(model, new, rates, parse_pattern("unstructured"))
    newer.check_within(new)
    assert int(newer["1.weight"].sum()) == int(new["1.weight"].sum()) - round(0.2 * int(new["1.weight"].sum()))


def test_global_ranking_pools_layers_at_the_base_rate():
    model = _mlp()
    with torch.no_grad():
        model[3].weight.add_(model[3].weight.sign())  # |w| > 1 > every |w| of layer 1: global ranking spares it
    rates = {"1.weight": 0.2, "3.weight": 0.2, "5.weight": 0.1}
    new = next_mask(model, Mask.ones(model, rates), rates, parse_pattern("unstructured"), global_rate=0.2)
    pooled = model[1].weight.numel() + model[3].weight.numel()
    assert int((~new["1.weight"]).sum()) + int((~new["3.weight"]).sum()) == round(0.2 * pooled)
    assert int((~new["3.weight"]).sum()) == 0
    assert int((~new["5.weight"]).sum()) == round(0.1 * 1000)  # edge layer ranked alone


@pytest.mark.parametrize("name,block", [("1x4", (1, 4)), ("4x1", (4, 1))])
def test_block_patterns_prune_whole_blocks(name, block):
    model = _mlp()
    rates = {"1.weight": 0.5, "3.weight": 0.5}
    mask = Mask.ones(model, rates)
    for _ in range(3):
        new = next_mask(model, mask, rates, parse_pattern(name))
        new.check_within(mask)
        mask = new
    bh, bw = block
    for n in rates:
        m = mask[n].reshape(mask[n].shape[0], -1).float()
        rows, cols = m.shape
        blocks = m[: rows - rows % bh, : cols - cols % bw].reshape(rows // bh, bh, cols // bw, bw).sum((1, 3))
        assert set(blocks.unique().tolist()) <= {0.0, float(bh * bw)}  # every block all kept or all pruned
        assert 0.1 < float(m.mean()) < 0.15  # 0.5 ** 3 of the blocks survive


def test_n_m_pattern_ends_with_exactly_n_per_group():
    model = _mlp()
    rates = {"3.weight": 0.2}
    mask = Mask.ones(model, rates)
    seen = []
    for _ in range(4):
        new = next_mask(model, mask, rates, parse_pattern("2:4"))
        new.check_within(mask)
        mask = new
        seen.append(int(mask["3.weight"].reshape(-1, 4).sum(1).max()))
    groups = mask["3.weight"].reshape(-1, 4).sum(1)
    assert seen == [3, 2, 2, 2] and bool((groups == 2).all())
    w = model[3].weight.detach().abs().reshape(-1, 4)
    kept_min = torch.where(mask["3.weight"].reshape(-1, 4), w, torch.inf).min(1).values
    dropped_max = torch.where(mask["3.weight"].reshape(-1, 4), -torch.inf, w).max(1).values
    assert bool((kept_min >= dropped_max).all())  # the largest two of every group survive
    plan = plan_layers(digits_cnn(), replace(FAST, pattern="3:8"), None, (1, 1, 8, 8), parse_pattern("3:8"))
    assert "0" in plan.dense and "not a multiple" in plan.dense["0"]  # 1x3x3 = 9 inputs per channel


def test_layer_plan_scales_first_and_last_layer():
    plan = plan_layers(digits_cnn(), Settings(target_rules="off"), None, (1, 1, 8, 8), parse_pattern("unstructured"))
    assert plan.rates == {"0.weight": 0.1, "3.weight": 0.2, "7.weight": 0.2, "10.weight": 0.2, "15.weight": 0.1}


def test_target_rules_decide_which_layers_are_pruned(monkeypatch):
    calls = []

    def prunable_layers(model, target, input_shape):
        calls.append((target.name, input_shape))
        return {"10": "1x1 convolution, no bias"}

    monkeypatch.setitem(sys.modules, "edgekit.rules", types.SimpleNamespace(prunable_layers=prunable_layers))
    rpi4 = load_target("rpi4")
    plan = plan_layers(digits_cnn(), Settings(), rpi4, (1, 1, 8, 8), parse_pattern("unstructured"))
    assert calls == [("rpi4", (1, 1, 8, 8))]
    assert list(plan.rates) == ["10.weight"] and plan.sparse_ok == {"10": "1x1 convolution, no bias"}
    assert set(plan.dense) == {"0", "3", "7", "15"}
    # A model with no layer the runtime can run sparse: auto prunes anyway and says why; on refuses.
    plan = plan_layers(_mlp(), Settings(), rpi4, (1, 1, 8, 8), parse_pattern("unstructured"))
    assert len(plan.rates) == 3 and "allow none of the selected layers" in plan.target_note
    with pytest.raises(SettingsError):
        plan_layers(_mlp(), Settings(target_rules="on"), rpi4, (1, 1, 8, 8), parse_pattern("unstructured"))


def _tiny_mobilenet():
    """Stem 3x3 stride 2 on 3 channels, depthwise 3x3 + 1x1 blocks, spatial mean: XNNPACK's sparse-group shape
    (small, because the rules export it to TFLite)."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 32, 1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_real_target_rules_prune_1x1_and_keep_stem_and_depthwise_dense():
    model = _tiny_mobilenet()
    plan = plan_layers(model, Settings(), load_target("rpi4"), (1, 3, 32, 32), parse_pattern("unstructured"))
    assert sorted(plan.rates) == ["4.weight", "8.weight"], plan.target_note  # the 1x1 convolutions
    assert {"0", "2", "6"} <= set(plan.dense)  # stem and depthwise stay dense
    assert "xnnpack" in plan.target_note
    # On this AVX host XNNPACK keeps the dense path: auto prunes for size and says so.
    plan = plan_layers(model, Settings(), load_target("host"), (1, 3, 32, 32), parse_pattern("unstructured"))
    assert len(plan.rates) == 5 and "allow none of the selected layers" in plan.target_note


def test_imp_invariants_and_controls(tmp_path):
    ds = digits()
    model = _mlp()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_layers(model, FAST, None, (1, 1, 8, 8), parse_pattern("unstructured"))
    res = run_imp(model, ds.x_train, ds.y_train, ds.x_test, ds.y_test, FAST, plan.rates, tmp_path / "p")
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    for prev, cur in zip(res.masks, res.masks[1:], strict=False):
        cur.check_within(prev)
    expected = (0.8 ** 2 * 30000 + 0.9 ** 2 * (19200 + 1000)) / 50200  # first and last layers at half rate
    assert res.rounds[-1]["remaining"] == pytest.approx(expected, abs=1e-3)
    res.mask.check_shapes(res.model)
    params = dict(res.model.named_parameters())
    for name, keep in res.mask.items():
        assert bool((params[name][~keep] == 0).all())  # pruned weights are exact zeros after training
    assert all(0 <= r[k] <= 1 for r in res.rounds[1:] for k in ("ticket", "reinit", "random_masks"))
    assert res.rounds[0]["reinit"] is None and res.rounds[0]["ticket"] > 0.5
    assert (tmp_path / "p" / "round-002.pt").is_file()
    # Same folder and settings: nothing is retrained, the same result comes back.
    again = run_imp(_mlp(), ds.x_train, ds.y_train, ds.x_test, ds.y_test, FAST, plan.rates, tmp_path / "p")
    assert again.resumed_from == 2 and again.mask == res.mask and again.rounds == res.rounds
    # More rounds later extend the finished run instead of starting over.
    more = run_imp(_mlp(), ds.x_train, ds.y_train, ds.x_test, ds.y_test, replace(FAST, rounds=3), plan.rates,
                   tmp_path / "p")
    assert more.resumed_from == 2 and more.rounds[:3] == res.rounds and len(more.rounds) == 4
    more.mask.check_within(res.mask)
    # Another initialisation is another run: the old rounds are not trusted, and they are dropped.
    other = _mlp(seed=1)
    assert not torch.equal(other[1].weight, init["1.weight"])
    fresh = run_imp(other, ds.x_train, ds.y_train, ds.x_test, ds.y_test, replace(FAST, rounds=0), plan.rates,
                    tmp_path / "p")
    assert fresh.resumed_from is None and not (tmp_path / "p" / "round-001.pt").exists()
    with pytest.raises(SettingsError, match="rewind_step"):
        run_imp(other, ds.x_train, ds.y_train, ds.x_test, ds.y_test, replace(FAST, rewind_step=10**6), plan.rates)


def test_rewind_step_resets_survivors_to_that_step():
    ds = digits()
    s = replace(FAST, rounds=1, rewind_step=3, reinit_control=False, random_mask_control=False)
    model = _mlp()
    init = model[1].weight.detach().clone()
    plan = plan_layers(model, s, None, (1, 1, 8, 8), parse_pattern("unstructured"))
    res = run_imp(model, ds.x_train, ds.y_train, ds.x_test, ds.y_test, s, plan.rates, None)
    assert res.rounds[-1]["ticket"] > 0.5 and not torch.equal(res.model[1].weight, init)


def _weights(run_dir):
    state = torch.load(sorted((run_dir / "state").glob("*prune.pt"))[0], weights_only=True)
    return state


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL a real `edgekit prune` after its first round checkpoint; the rerun ends bit-for-bit like an
    uninterrupted run with the same seed."""
    args = ["prune", "edgekit:digits_mlp", "--data", "digits", "--rounds", "3", "--epochs", "3", "--seed", "3",
            "--set", "prune.batch_size=64", "--set", "check.enabled=false"]  # check: tests/test_check.py
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    # The uninterrupted run goes alongside, to keep the test's wall time down.
    ref_err = tmp_path / "whole.stderr"
    with open(ref_err, "w") as err:
        ref = subprocess.Popen([*EDGEKIT, *args, "--out", str(whole)], env=env, stdout=subprocess.DEVNULL,
                               stderr=err)
    proc = subprocess.Popen([*EDGEKIT, *args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = killed / "prune" / "round-001.pt"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "prune" / "round-003.pt").exists()
    r = run_cli(*args, "--out", str(killed), env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert ref.wait(timeout=600) == 0, ref_err.read_text()[-2000:]
    a, b = (json.loads((d / "report.json").read_text()) for d in (killed, whole))
    sa, sb = (next(s for s in rep["stages"] if s["name"] == "prune") for rep in (a, b))
    assert sa["details"]["resumed_from_round"] >= 1 and sb["details"]["resumed_from_round"] is None
    strip = [{k: v for k, v in rec.items() if k != "seconds"} for rec in sa["details"]["rounds"]]
    assert strip == [{k: v for k, v in rec.items() if k != "seconds"} for rec in sb["details"]["rounds"]]
    assert Mask.load(killed / "prune" / "mask.pt") == Mask.load(whole / "prune" / "mask.pt")
    wa, wb = _weights(killed), _weights(whole)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # The report has the plot, the accuracy table and the per-layer table.
    md = (killed / "report.md").read_text()
    assert "![test accuracy vs weights remaining](prune/lottery.png)" in md and "per-layer sparsity" in md
    assert (killed / "prune" / "lottery.png").stat().st_size > 1000
    assert np.isclose(sa["metrics"]["weights_remaining"], sa["details"]["sparsity"]["remaining"], atol=1e-6)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    r = run_cli("prune", "edgekit:digits_mlp", "--data", "digits", "--rate", "1.5", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "rate must be in (0, 1)" in r.stderr
    assert not (tmp_path / "x" / "report.json").exists()


def test_recipe_and_unlabelled_data():
    from edgekit.data import synthetic
    from edgekit.pipeline import load_recipe
    from edgekit.stages import prune as stage

    recipe = load_recipe("lottery")
    names = [s.name for s in recipe.stages]
    assert names.index("baseline") < names.index("prune") < names.index("export")
    assert isinstance(recipe.stages[names.index("prune")].settings, Settings)
    ctx = types.SimpleNamespace(data=synthetic((1, 1, 8, 8)))
    with pytest.raises(SettingsError, match="needs labelled data"):
        stage.run(_mlp(), FAST, ctx)
