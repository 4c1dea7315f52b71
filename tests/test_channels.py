"""Channel pruning (Torch-Pruning) and structured lottery tickets: residual, depthwise and squeeze-excitation models
stay consistent and export to verified artifacts; kept channels follow the target's multiple; a killed structured
prune resumes to the result of an uninterrupted run; a finished one is rebuilt on pipeline resume."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from edgekit.data import digits
from edgekit.errors import SettingsError
from edgekit.prune.channels import ChannelPruner, prune_to_widths, replay, round_channels
from edgekit.prune.structured import run_channel_imp
from edgekit.stages.prune import Settings
from edgekit.targets import load_target, simd_channel_multiple
from edgekit.zoo import digits_cnn

FAST = Settings(structure="channel", rounds=2, rate=0.5, epochs=1, batch_size=128, device="cpu",
                target_rules="off")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one thread: the same reductions on any machine, no oversubscription


def test_round_channels_and_target_multiples():
    assert round_channels(37, 64, 16) == 32 and round_channels(41, 64, 16) == 48
    assert round_channels(3, 64, 16) == 16  # never below one multiple
    assert round_channels(70, 64, 16) == 64 and round_channels(5, 12, 16) == 12  # never above the group
    assert round_channels(21, 24, 16) == 24 and round_channels(19, 24, 16) == 16  # 24 is not a multiple: all or 16
    with pytest.raises(SettingsError):
        round_channels(8, 16, 0)
    assert simd_channel_multiple("x86_64", ("avx2", "avx512f")) == 16
    assert simd_channel_multiple("x86_64", ("avx", "avx2", "fma")) == 8
    assert simd_channel_multiple("x86_64", ("sse4_2",)) == 4
    assert simd_channel_multiple("aarch64", ("neon",)) == 8
    host = load_target("host")
    assert host.channel_multiple == simd_channel_multiple(host.arch, host.simd)  # "auto" is read from this CPU
    assert load_target("rpi4").channel_multiple == 8 and load_target("wasm").channel_multiple == 4


def _models():
    torch.manual_seed(0)
    return {
        "resnet18": torchvision.models.resnet18(num_classes=10),  # residual adds
        "mobilenet_v2": torchvision.models.mobilenet_v2(num_classes=10),  # depthwise convolutions, residual adds
        "mobilenet_v3_small": torchvision.models.mobilenet_v3_small(num_classes=10),  # squeeze-excitation
    }


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_channel_pruning_keeps_the_model_consistent_and_exports(name, tmp_path):
    from edgekit.export import onnx as onnx_export
    from edgekit.export.verify import verify_artifact

    model = _models()[name].eval()
    original = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32)
    res = prune_to_widths(model, x, 0.5, multiple=8)
    assert res.params_after < 0.5 * res.params_before
    assert model(x).shape == (1, 10)  # every coupled dimension shrank together
    for g in res.groups:
        if g["reason"]:
            assert g["kept"] == g["channels"]
        elif g["channels"] > 8:
            assert g["kept"] % 8 == 0 and g["kept"] < g["channels"]
    assert any("model's output" in g["reason"] for g in res.groups)  # the classifier keeps its 10 outputs
    mods = dict(model.named_modules())
    if name == "resnet18":  # the residual stream of layer1 is one group: stem, both blocks' outputs
        assert mods["conv1"].out_channels == mods["layer1.0.conv2"].out_channels == mods["layer1.1.conv2"].out_channels
    if name == "mobilenet_v2":  # depthwise layers follow their expansion convolution
        dw = mods["features.2.conv.1.0"]
        assert dw.groups == dw.in_channels == dw.out_channels == mods["features.2.conv.0.0"].out_channels
    if name == "mobilenet_v3_small":  # squeeze-excitation: its expand matches the depthwise channels it scales
        se = mods["features.4.block.2"]
        assert se.fc2.out_channels == mods["features.4.block.1.0"].out_channels == se.fc1.in_channels
    # The history rebuilds the architecture on a fresh copy; the pruned weights load into it.
    rebuilt = replay(original, x, res.history)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
    path = onnx_export.export(model, x.numpy(), tmp_path / f"{name}.onnx")
    with torch.no_grad():
        ref = model(x).numpy()
    v = verify_artifact(path, "onnxruntime", ref, x.numpy())
    assert v["passed"], v


def test_pruned_squeeze_excitation_model_exports_to_tflite(tmp_path):
    from edgekit.export import tflite as tflite_export
    from edgekit.export.verify import verify_artifact

    model = _models()["mobilenet_v3_small"].eval()
    x = torch.randn(2, 3, 32, 32)
    prune_to_widths(model, x[:1], 0.5, multiple=8)
    path = tflite_export.export(model, x[:1].numpy(), tmp_path / "m.tflite")
    with torch.no_grad():
        ref = model(x).numpy()
    assert verify_artifact(path, "litert", ref, x.numpy())["passed"]


def test_groups_that_cannot_shrink_say_why():
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3)
            self.b = nn.Conv2d(16, 16, 3, groups=4)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.b(self.a(x)).mean((2, 3)))

    pruner = ChannelPruner(Grouped().eval(), torch.randn(1, 3, 12, 12))
    why = {g.name: g.reason for g in pruner.groups}
    assert "grouped convolution" in why["a"] and "model's output" in why["head"]
    with pytest.raises(SettingsError, match="cannot be pruned"):
        pruner.prune({"a": [0]})
    with pytest.raises(SettingsError, match="no channel group"):
        pruner.group("nope")


def _cnn():
    torch.manual_seed(0)
    return digits_cnn()


def test_structured_imp_invariants_and_resume_after_a_kill(tmp_path):
    ds = digits()
    x = torch.zeros(1, 1, 8, 8)
    whole = run_channel_imp(_cnn(), ds.x_train, ds.y_train, ds.x_test, ds.y_test, FAST, x, 8, tmp_path / "whole")
    rounds = whole.rounds
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for prev, cur in zip(rounds, rounds[1:], strict=False):
        assert all(cur["widths"][g] <= prev["widths"][g] for g in cur["widths"])  # channels only ever go
        assert cur["remaining"] < prev["remaining"]
    assert rounds[1]["widths"] == {"0": 8, "3": 16, "7": 32, "10": 32}  # half of each group, multiples of 8
    assert all(r["reinit"] is not None and r["random_masks"] is not None for r in rounds[1:])
    assert whole.model(x).shape == (1, 10)
    # A run killed after round 1's checkpoint (here: interrupted by its progress callback) resumes from round 1.
    killed = tmp_path / "killed"

    def die(rec):
        if rec["round"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_channel_imp(_cnn(), ds.x_train, ds.y_train, ds.x_test, ds.y_test, FAST, x, 8, killed, on_round=die)
    assert (killed / "round-001.pt").is_file() and not (killed / "round-002.pt").exists()
    resumed = run_channel_imp(_cnn(), ds.x_train, ds.y_train, ds.x_test, ds.y_test, FAST, x, 8, killed)
    assert resumed.resumed_from == 1
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(resumed.rounds) == strip(rounds) and resumed.history == whole.history
    sa, sb = resumed.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Another seed is another run: its rounds start over.
    other = run_channel_imp(_cnn(), ds.x_train, ds.y_train, ds.x_test, ds.y_test, replace(FAST, seed=1, rounds=0),
                            x, 8, killed)
    assert other.resumed_from is None and not (killed / "round-001.pt").exists()


def test_structured_prune_stage_in_a_recipe_resumes_the_thin_model(tmp_path):
    from edgekit import api

    recipe = {"stages": [{"baseline": {}}, {"prune": {"structure": "channel", "rounds": 1, "epochs": 1,
                                                      "rate": 0.5, "channel_multiple": 8}},
                         {"export": {"formats": ["onnx"]}}, {"verify": {}}]}
    out = tmp_path / "run"
    first = api.compress(None, "host", recipe=recipe, out=out)
    stage = next(s for s in first["stages"] if s["name"] == "prune")
    assert stage["details"]["structure"] == "channel" and stage["details"]["widths"]["7"] == 32
    assert stage["params_total"] < next(s for s in first["stages"] if s["name"] == "baseline")["params_total"]
    assert all(a["verification"]["passed"] for a in first["artifacts"])
    md = (out / "report.md").read_text()
    assert "Structured lottery ticket" in md and "same thin network trained from a fresh initialisation" in md
    # A changed later setting reuses the prune stage: its architecture is rebuilt so its checkpoint loads.
    recipe["stages"][3] = {"verify": {"inputs": 16}}
    again = api.compress(None, "host", recipe=recipe, out=out)
    assert [s["fingerprint"] for s in again["stages"][:3]] == [s["fingerprint"] for s in first["stages"][:3]]
    assert all(a["verification"]["passed"] for a in again["artifacts"])
    with pytest.raises(SettingsError, match="applies to structure weights"):
        Settings(structure="channel", pattern="2:4")
    with pytest.raises(SettingsError, match="structure"):
        Settings(structure="filters")
    assert np.isfinite(stage["metrics"]["reinit_accuracy"])
