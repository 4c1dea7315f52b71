"""Joint pruning + quantisation search: the decision space, the choice rule, the search on a tiny model as a recipe
stage (artifacts verified, the chosen architecture rebuilt on resume), and no host latency for another target."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from conftest import stage_record
from edgekit.errors import SettingsError
from edgekit.joint.evaluate import JointCandidate
from edgekit.joint.search import build_space
from edgekit.joint.settings import Settings
from edgekit.joint.space import Decision
from edgekit.search_core import Constraints, choose
from edgekit.targets import load_target
from edgekit.zoo import digits_cnn

ONNX_ONLY = {"runtimes": ["onnxruntime"], "trials": 7, "finetune_epochs": 1, "eval_inputs": 128, "timing_runs": 5,
             "final_runs": 20, "widths": [1.0, 0.5], "channel_multiple": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one thread: the same reductions on any machine, no oversubscription


def _space(**kw):
    torch.manual_seed(0)
    import numpy as np

    s = Settings(**{"widths": (1.0, 0.5), **kw})
    return build_space(digits_cnn().eval(), np.zeros((1, 1, 8, 8), np.float32), load_target("host"), s,
                       ["onnxruntime", "litert"], 8)


def test_space_seeds_and_trial_round_trip():
    space = _space()
    assert [g.name for g in space.groups] == ["0", "3", "7", "10"]  # the classifier's group is fixed
    assert "model's output" in space.fixed_reasons["15"]
    assert space.group("7").choices == {1.0: 64, 0.5: 32}
    assert space.layers == ["0", "3", "7", "10", "15"] and not space.sparse_layers  # no sparse kernels on AVX
    seeds = space.seeds()
    labels = [d.label for d in seeds]
    assert "unmodified (onnxruntime)" in labels and "full INT8 (litert)" in labels
    assert len({d.key() for d in seeds}) == len(seeds)
    full = next(d for d in seeds if d.label == "full INT8 (onnxruntime)")
    assert full.int8 == tuple(sorted(space.layers)) and not full.widths
    half = next(d for d in seeds if d.label == "width 0.5 (litert)")
    assert dict(half.widths) == {"0": 8, "3": 16, "7": 32, "10": 32} and not half.int8
    # An Optuna trial with a decision's parameters gives that decision back.
    trial = optuna.trial.FixedTrial(space.params(half))
    assert space.suggest(trial) == half
    assert Decision.from_dict(json.loads(json.dumps(half.as_dict()))) == half
    # Restricted spaces: INT8 only keeps every width; width only keeps every layer float.
    assert not _space(dimensions=("precision",)).groups
    assert not _space(dimensions=("width",)).make("onnxruntime", 0.5, int8=True).int8


def _cand(drop, p50, size, label):
    return JointCandidate(Decision("onnxruntime", label=label), quality=1 - drop / 100, drop=drop, p50_ms=p50,
                          size_bytes=size)


def test_choice_prefers_the_lowest_drop_near_the_fastest_feasible():
    cands = [_cand(0.0, 2.0, 300, "dense"), _cand(0.8, 1.0, 100, "fast"), _cand(0.3, 1.04, 120, "near-fast"),
             _cand(5.0, 0.5, 50, "too lossy")]
    chosen, why, met = choose(cands, Constraints(max_quality_drop=1.0), 0.05)
    assert chosen.label == "near-fast" and met and "lowest quality drop" in why
    screened = JointCandidate(Decision("onnxruntime", label="screened"), status="screened out", screen_ms=0.1)
    chosen, _, met = choose([*cands, screened], Constraints(max_quality_drop=0.1), 0.05)
    assert met and chosen.label == "dense"
    chosen, why, met = choose(cands[1:], Constraints(max_quality_drop=0.1), 0.05)
    assert not met and chosen.label == "near-fast" and "closest" in why
    with pytest.raises(SettingsError):
        Settings(dimensions=("depth",))


def test_search_as_a_recipe_stage_on_a_tiny_model(tmp_path):
    """The joint stage on the digits CNN: every candidate scored against the unmodified model in the same runtime,
    the chosen artifact verified, the pruned architecture exported and rebuilt when the run resumes."""
    from edgekit import api

    recipe = {"stages": [{"baseline": {}}, {"joint": ONNX_ONLY}, {"export": {"formats": ["onnx"]}}, {"verify": {}}]}
    out = tmp_path / "run"
    rep = api.compress(None, "host", recipe=recipe, out=out)
    joint = stage_record(rep, "joint")
    d = joint["details"]
    assert d["latency"] == "measured" and d["anchor_runtime"] == "onnxruntime"
    cands = d["candidates"]
    assert cands[0]["label"] == "unmodified (onnxruntime)" and cands[0]["drop"] == 0
    assert any(c["label"] == "full INT8 (onnxruntime)" for c in cands)
    assert d["candidates_evaluated"] + d["screened_out"] == len(cands)
    assert d["candidates_measured"] <= d["candidates_evaluated"]
    for c in cands:
        if c["status"] == "evaluated":
            assert c["latency_source"] == "measured" and c["p50_ms"] > 0 and c["size_bytes"] > 0
            assert all(k % 8 == 0 for k in c["decision"]["widths"].values())
        else:
            assert c["screen_ms"] is not None and c["p50_ms"] is None
    chosen = d["chosen"]
    assert chosen["drop"] <= 1.0 and joint["metrics"]["constraints_met"]
    assert set(d["timings"]) >= {"dense_onnxruntime", "chosen"}
    kept = {row["layer"]: row["kept"] for row in d["layers"]}
    assert kept["7"] == chosen["decision"]["widths"].get("7", 64)
    arts = {a["path"]: a for a in rep["artifacts"]}
    assert "artifacts/model_joint.onnx" in arts and all(a["verification"]["passed"] for a in arts.values())
    md = (out / "report.md").read_text()
    assert "Joint pruning + quantisation search" in md and "![Pareto front](joint_pareto.png)" in md
    assert (out / "joint_pareto.png").stat().st_size > 1000
    # Resume with a changed later setting: the joint stage is reused and its architecture rebuilt.
    recipe["stages"][3] = {"verify": {"inputs": 16}}
    again = api.compress(None, "host", recipe=recipe, out=out)
    assert stage_record(again, "joint")["fingerprint"] == joint["fingerprint"]
    assert all(a["verification"]["passed"] for a in again["artifacts"])


def test_another_target_never_gets_host_timings(tmp_path):
    from edgekit.data import digits
    from edgekit.joint.search import search_joint
    from edgekit.zoo import trained_digits_cnn

    s = Settings(**{**ONNX_ONLY, "trials": 3, "widths": (1.0, 0.5), "runtimes": ("onnxruntime",)})
    r = search_joint(trained_digits_cnn(), digits(), load_target("rpi4"), s, tmp_path)
    assert r.latency in ("predicted", "none") and not r.timings
    assert all(c.latency_source != "measured" for c in r.candidates)
    assert r.measured == 0


def test_sparsity_is_searched_only_where_the_runtime_runs_sparse_weights(tmp_path):
    """rpi4's XNNPACK runs the 1x1 convolutions of a stem-to-mean group sparse: those layers get a sparsity choice,
    a sparse decision is fine-tuned with its zeros held and stored sparse; the AVX host offers no sparsity."""
    import numpy as np

    from edgekit.joint.build import Builder, TrainData
    from edgekit.rules import read_tflite

    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 32, 1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    s = Settings(sparsities=(0.0, 0.75), finetune_epochs=1, batch_size=8)
    space = build_space(model, x, load_target("rpi4"), s, ["litert"], 8)
    assert space.sparse_layers == ["4", "8"]  # the stem and the depthwise layers stay dense
    d = space.make("litert", int8=True, sparsity=0.75)
    assert dict(d.sparsity) == {"4": 0.75, "8": 0.75} and not set(d.int8) & {"4", "8"}  # sparse kernels are float
    assert not build_space(model, x, load_target("host"), s, ["litert"], 8).sparse_layers
    xs = np.random.default_rng(1).standard_normal((16, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ys = model(torch.as_tensor(xs)).argmax(1).numpy()
    builder = Builder(model, x, TrainData(xs, ys, False), s, tmp_path)
    sparse = Decision("litert", sparsity=(("4", 0.75), ("8", 0.75)))
    tuned = builder.tuned(sparse)
    for name in ("4", "8"):
        w = dict(tuned.named_parameters())[f"{name}.weight"]
        assert float((w == 0).float().mean()) == pytest.approx(0.75, abs=0.01)  # held through fine-tuning
    graph = read_tflite(builder.artifact(tuned, sparse, "sparse"))
    assert graph.has_densify


def test_distillation_caps_train_inputs_at_the_data(tmp_path):
    """`train_inputs` is a cap: with distillation on and fewer training inputs than the cap (auto's 2000 against the
    digits' 1347), a pruned candidate is fine-tuned on all of them against the unmodified model's probabilities."""
    import numpy as np

    from edgekit.joint.build import Builder, TrainData

    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8), dtype=np.float32)
    xs = np.random.default_rng(1).standard_normal((24, 1, 8, 8), dtype=np.float32)
    ys = np.arange(24) % 4
    s = Settings(finetune_epochs=1, batch_size=8, distill=0.5, train_inputs=2000)
    builder = Builder(model, x, TrainData(xs, ys, True), s, tmp_path)
    d = Decision("litert", widths=(("0", 8),))  # group "0" keeps 8 of its 16 channels
    tuned = builder.tuned(d)
    assert dict(tuned.named_parameters())["0.weight"].shape[0] == 8 and builder.finetunes == 1
    assert builder.teacher(len(xs)).shape == (24, 4)


def test_finetune_steps_give_small_data_more_epochs(tmp_path, monkeypatch):
    """A thinner candidate needs optimiser steps to recover: finetune_steps turns into more epochs on small data,
    never fewer than finetune_epochs, and the candidate's fit really runs that many epochs."""
    import numpy as np
    import torch

    from edgekit.joint.build import Builder, TrainData

    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4)).eval()
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8), dtype=np.float32)
    xs = np.random.default_rng(1).standard_normal((40, 1, 8, 8), dtype=np.float32)
    ys = np.arange(40) % 4

    def builder(**kw):
        return Builder(model, x, TrainData(xs, ys, True), Settings(batch_size=8, **kw), tmp_path)

    assert builder(finetune_epochs=2).candidate_epochs() == 2  # no step floor: the epochs as set
    assert builder(finetune_epochs=2, finetune_steps=23).candidate_epochs() == 5  # 5 steps per epoch: 23 -> 5 epochs
    assert builder(finetune_epochs=7, finetune_steps=23).candidate_epochs() == 7  # never fewer than finetune_epochs
    assert builder(finetune_epochs=1, finetune_steps=23, train_inputs=16).candidate_epochs() == 12  # 2 per epoch
    b = builder(finetune_epochs=1, finetune_steps=12)
    seen = []
    import edgekit.train

    real_fit = edgekit.train.fit
    monkeypatch.setattr(edgekit.train, "fit", lambda *a, **kw: seen.append(kw["epochs"]) or real_fit(*a, **kw))
    b.tuned(Decision("litert", widths=(("0", 8),)))
    assert seen == [3] and b.finetunes == 1
    with pytest.raises(SettingsError, match="finetune_steps"):
        Settings(finetune_steps=-1)


def test_confidence_margin_keeps_a_lucky_candidate_out():
    """With `confidence`, a candidate is feasible only when its drop plus that many paired standard errors is within
    the budget: a candidate that trades many inputs for many (large error) is refused at a drop a candidate that
    changes few inputs passes with; the standard error comes from the disagreements."""
    import numpy as np

    from edgekit.train import paired_drop_se

    ref = np.array([True] * 90 + [False] * 10)
    few = ref.copy()
    few[:1] = False  # one input lost: drop 1 point, tiny error
    many = ref.copy()
    many[:11], many[90:100] = False, True  # 11 lost, 10 gained: also 1 point down, far noisier
    se_few, se_many = paired_drop_se(ref, few), paired_drop_se(ref, many)
    assert 0.9 < se_few < 1.0 and 4.0 < se_many < 5.0
    assert paired_drop_se(ref, ref) == 0.0

    def cand(label, drop, se, p50):
        c = JointCandidate(Decision("litert", label=label), drop=drop, p50_ms=p50)
        c.drop_se = se
        return c

    lucky, safe, base = cand("lucky", 0.5, 1.8, 0.18), cand("safe", -2.5, 1.5, 0.24), cand("base", 0.0, 0.0, 0.33)
    plain = Constraints(1.0, None, None, 0.0)
    bound = Constraints(1.0, None, None, 1.0)
    assert choose([lucky, safe, base], plain, 0.05)[0] is lucky
    best, reason, met = choose([lucky, safe, base], bound, 0.05)
    assert best is safe and met and "plus 1 standard error is" in reason and "-2.50 ± 1.50" in reason
    with pytest.raises(SettingsError, match="confidence"):
        Settings(confidence=-1)
