"""Adapters: closed-form parameter counts, merge equivalence, no adapter ops after export, adapter files, the
adapt stage with a new head and resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import stage_record
from edgekit import adapters
from edgekit.errors import InputError, SettingsError
from edgekit.zoo import digits_cnn

# The digits CNN's convs: name -> (C_out, C_in, kh, kw); its head "15" is Linear(64, 10).
CONVS = {"0": (16, 1, 3, 3), "3": (32, 16, 3, 3), "7": (64, 32, 3, 3), "10": (64, 64, 1, 1)}


def formula(method: str, shape: tuple[int, ...], r: int) -> int:
    """Written out independently of the library: the count each method's definition gives."""
    if len(shape) == 2:  # Linear (out, in): B (out x r), A (r x in), DoRA adds a magnitude per output
        o, i = shape
        return r * (o + i) + (o if method == "dora" else 0)
    o, i, kh, kw = shape
    return {
        "cp-lora": r * (o + i + (kh > 1) * kh + (kw > 1) * kw),  # CP factors; a size-1 mode has none
        "lora-c": (o * kh) * (r * kh) + (r * kh) * (i * kw),  # B (o*kh x r*kh), A (r*kh x i*kw)
        "lora": r * i * kh * kw + o * r,                    # peft: KxK conv in->r, 1x1 conv r->out
        "dora": r * i * kh * kw + o * r + o,
    }[method]


def _randomise(model: nn.Module) -> None:
    """Non-zero adapters (fresh ones start as a no-op, which would make merge checks vacuous)."""
    g = torch.Generator().manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "magnitude" in n else 0.0)


@pytest.mark.parametrize("method", adapters.METHODS)
@pytest.mark.parametrize("rank", [1, 3])
def test_param_counts_match_closed_form(method, rank):
    model = digits_cnn()
    layers = adapters.add_adapters(model, method, rank, 2.0, ["Conv2d", "Linear"])
    shapes = {**CONVS, "15": (10, 64)}
    assert [a.name for a in layers] == list(shapes)
    for a in layers:
        assert a.params == formula(method, shapes[a.name], rank), (a.name, a.impl)
    assert adapters.adapter_param_count(model) == sum(formula(method, s, rank) for s in shapes.values())
    # Only adapters train: the base is frozen.
    assert adapters.trainable_param_count(model) == adapters.adapter_param_count(model)


def test_cp_lora_fewer_params_than_lora_c_at_same_rank():
    shapes = [*CONVS.values(), (64, 64, 3, 3), (512, 512, 3, 3), (64, 3, 7, 7), (128, 64, 1, 1), (8, 8, 1, 3)]
    for r in (1, 2, 4, 8, 16):
        for s in shapes:
            if s[2:] == (1, 1):  # a 1x1 kernel is a matrix: both are plain LoRA there
                assert formula("cp-lora", s, r) == formula("lora-c", s, r), (s, r)
            else:
                assert formula("cp-lora", s, r) < formula("lora-c", s, r), (s, r)
        model_cp, model_c = digits_cnn(), digits_cnn()
        n_cp = sum(a.params for a in adapters.add_adapters(model_cp, "cp-lora", r, 1.0, ["Conv2d"]))
        n_c = sum(a.params for a in adapters.add_adapters(model_c, "lora-c", r, 1.0, ["Conv2d"]))
        assert n_cp < n_c


@pytest.mark.parametrize("method", adapters.METHODS)
def test_merged_equals_unmerged_and_is_plain(method):
    torch.manual_seed(0)
    model = digits_cnn().eval()
    base = copy.deepcopy(model)
    adapters.add_adapters(model, method, 4, 4.0, ["Conv2d", "Linear"])
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), base(x), atol=1e-6), "a fresh adapter must start as a no-op"
        _randomise(model)
        unmerged = model.eval()(x)
        assert (unmerged - base(x)).abs().max() > 1e-2  # the adapters do change the function
        adapters.merge_adapters(model)
        merged = model(x)
    assert (merged - unmerged).abs().max() < 1e-5
    assert {type(m) for m in model.modules()} == {type(m) for m in base.modules()}
    assert list(model.state_dict()) == list(base.state_dict())
    assert not adapters.has_adapters(model)


def test_cp_lora_update_is_rank_r_cp_and_handles_stride_groups():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=2, bias=True)
    ad = adapters.CPLoRAConv2d(copy.deepcopy(conv), rank=3, alpha=3.0)
    assert ad.adapter_numel() == 3 * (12 + 4 + 3 + 5)
    _randomise(ad)
    delta = ad.delta_weight()
    expected = torch.einsum("or,ir,hr,wr->oihw", ad.lora_out, ad.lora_in, ad.lora_h, ad.lora_w)
    assert torch.allclose(delta, expected)
    x = torch.randn(2, 8, 9, 11)
    ref = nn.functional.conv2d(x, conv.weight + delta, conv.bias, 2, (1, 2), 1, 2)
    assert torch.allclose(ad(x), ref, atol=1e-5)
    # Unfolded over (out) x (in*kh*kw), a rank-3 CP update has matrix rank <= 3.
    assert torch.linalg.matrix_rank(delta.reshape(12, -1)) <= 3


def test_training_moves_only_adapters_and_head():
    from edgekit.data import digits
    from edgekit.train import fit

    ds = digits()
    torch.manual_seed(0)
    model = digits_cnn()
    model[-1] = nn.Linear(64, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapters.add_adapters(model, "cp-lora", 2, 2.0, ["Conv2d"], train_modules=["15"])
    with adapters.frozen_norms(model, ["15"]):
        fit(model, ds.x_train[:128], ds.y_train[:128], epochs=2, lr=1e-2,
            params=[p for p in model.parameters() if p.requires_grad])
    after = model.state_dict()
    for k, v in before.items():
        k2 = k if k.startswith("15.") or k.split(".")[0] not in CONVS else k.replace(".weight", ".base_layer.weight")
        if k.startswith("15."):
            assert not torch.equal(after[k2], v), k
        else:
            assert torch.equal(after[k2], v), f"{k} changed: the base (BN statistics included) must stay frozen"
    assert any(not torch.all(p == 0) for n, p in model.named_parameters() if "lora_out" in n)


def test_exported_onnx_has_no_adapter_ops(tmp_path):
    import onnx

    from edgekit.export import onnx as onnx_export

    torch.manual_seed(0)
    base = digits_cnn().eval()
    model = copy.deepcopy(base)
    adapters.add_adapters(model, "cp-lora", 4, 4.0, ["Conv2d"])
    _randomise(model)
    adapters.merge_adapters(model)
    x = np.zeros((1, 1, 8, 8), np.float32)

    def ops(m, name):
        g = onnx.load(str(onnx_export.export(m, x, tmp_path / name))).graph
        return sorted(n.op_type for n in g.node), [i.name for i in g.initializer]

    base_ops, _ = ops(base, "base.onnx")
    merged_ops, names = ops(model, "merged.onnx")
    assert merged_ops == base_ops  # the same operators, one Conv per conv: nothing left of the adapters
    assert merged_ops.count("Conv") == 4 and "Einsum" not in merged_ops
    assert not [n for n in names if "lora" in n]


def test_adapter_file_roundtrip_and_swap(tmp_path):
    torch.manual_seed(0)
    base = digits_cnn().eval()
    model = copy.deepcopy(base)
    model[-1] = nn.Linear(64, 3)
    layers = adapters.add_adapters(model, "lora-c", 2, 2.0, ["Conv2d"], train_modules=["15"])
    _randomise(model)
    meta = {"method": "lora-c", "rank": 2, "alpha": 2.0, "layers": [a.name for a in layers], "train_modules": ["15"]}
    path = adapters.save_adapter(model, tmp_path / "task.safetensors", meta)
    adapters.merge_adapters(model)
    x = torch.randn(8, 1, 8, 8)
    swapped = adapters.merge_adapters(adapters.load_adapter(copy.deepcopy(base), path))
    with torch.no_grad():
        assert torch.allclose(swapped.eval()(x), model.eval()(x), atol=1e-6)
    assert swapped[-1].out_features == 3
    base_bytes = sum(v.numel() * 4 for v in base.state_dict().values())
    assert path.stat().st_size < 0.3 * base_bytes  # adapter + 3-class head only
    # A file for another model (different layer shapes) is refused with a clear error, not half-loaded.
    other = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 3))
    with pytest.raises((InputError, SettingsError)):
        adapters.load_adapter(other, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError):
        adapters.load_adapter(copy.deepcopy(base), tmp_path / "junk.safetensors")


def test_stage_settings_are_validated():
    from edgekit.stages.adapt import Settings

    with pytest.raises(SettingsError):
        Settings(method="lokr")
    with pytest.raises(SettingsError):
        Settings(rank=0)
    with pytest.raises(SettingsError):
        Settings(head="replace")


def test_adapt_stage_new_head_merges_and_resumes(tmp_path):
    """adapt with a new 3-class head on an .npz of digits 0-2, then a resumed run that must rebuild the head."""
    import json

    from edgekit import api
    from edgekit.data import digits

    ds = digits()
    keep = np.concatenate([ds.y_train, ds.y_test]) < 3
    x = np.concatenate([ds.x_train, ds.x_test])[keep]
    y = np.concatenate([ds.y_train, ds.y_test])[keep]
    npz = tmp_path / "three.npz"
    np.savez(npz, x=x, y=y)
    adapt = {"method": "cp-lora", "rank": 2, "layers": ["Conv2d"], "head": "new", "epochs": 3, "max_train": 60}
    out = tmp_path / "run"
    rep = api.compress(None, "host", recipe={"stages": [{"adapt": adapt}, {"baseline": {"max_inputs": 50}}]},
                       data=str(npz), out=out)
    rec = stage_record(rep, "adapt")
    assert rec["metrics"]["merge_max_abs_err"] < 1e-5
    assert rec["metrics"]["adapter_params"] == sum(formula("cp-lora", s, 2) for s in CONVS.values())
    assert rec["metrics"]["head_params"] == 64 * 3 + 3
    assert rec["details"]["head_out"] == 3
    assert (out / "artifacts" / "adapter.safetensors").is_file()
    # Resume: adapt is reused (restore rebuilds the 3-class head), then the changed baseline loads its checkpoint.
    rep2 = api.compress(None, "host", recipe={"stages": [{"adapt": adapt}, {"baseline": {"max_inputs": 40}}]},
                        data=str(npz), out=out)
    assert stage_record(rep2, "adapt")["seconds"] == rec["seconds"]  # the same record: not trained again
    assert stage_record(rep2, "baseline")["metrics"]["accuracy"] > 0.5
    assert stage_record(json.loads((out / "report.json").read_text()), "baseline")["details"]["inputs"] == 40


def test_cli_rejects_bad_settings_with_one_line():
    from conftest import run_cli

    r = run_cli("adapt", "--method", "lokr", "--out", "/nonexistent/never-written")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "method must be one of" in r.stderr
    r = run_cli("decompose", "--method", "svd", "--out", "/nonexistent/never-written")
    assert r.returncode == 2 and "cp or tucker" in r.stderr
