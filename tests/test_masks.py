"""Mask type invariants: 0/1 only, shapes equal the weights', monotone over rounds, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from edgekit.masks import Mask, MaskError
from edgekit.zoo import digits_mlp


@pytest.fixture()
def mlp():
    torch.manual_seed(0)
    return digits_mlp()


def test_rejects_values_other_than_zero_and_one():
    with pytest.raises(MaskError, match="other than 0 and 1"):
        Mask({"w": torch.tensor([0.0, 0.5, 1.0])})
    with pytest.raises(MaskError, match="non-finite"):
        Mask({"w": torch.tensor([0.0, float("nan")])})
    with pytest.raises(MaskError, match="not a tensor"):
        Mask({"w": [0, 1]})
    m = Mask({"w": torch.tensor([0, 1, 1])})
    assert m["w"].dtype == torch.bool and m.nonzero() == 2 and m.total() == 3


def test_shapes_must_match_the_weights(mlp):
    m = Mask.ones(mlp, ["1.weight", "3.weight"])
    m.check_shapes(mlp)
    with pytest.raises(MaskError, match="shape"):
        Mask({"1.weight": torch.ones(300, 63)}).check_shapes(mlp)
    with pytest.raises(MaskError, match="names no parameter"):
        Mask({"9.weight": torch.ones(1)}).check_shapes(mlp)
    with pytest.raises(MaskError, match="no parameters"):
        Mask.ones(mlp, ["nope.weight"])


def test_monotone_over_rounds():
    prev = Mask({"w": torch.tensor([1, 1, 0, 1])})
    Mask({"w": torch.tensor([1, 0, 0, 1])}).check_within(prev)
    with pytest.raises(MaskError, match="revives 1"):
        Mask({"w": torch.tensor([1, 1, 1, 1])}).check_within(prev)
    with pytest.raises(MaskError, match="different layers"):
        Mask({"v": torch.tensor([1, 1, 0, 1])}).check_within(prev)


def test_apply_zeroes_exactly_the_pruned_weights(mlp):
    w = mlp[1].weight.detach().clone()
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.7
    Mask({"1.weight": keep}).apply(mlp)
    assert torch.equal(mlp[1].weight[keep], w[keep])
    assert bool((mlp[1].weight[~keep] == 0).all())


def test_random_like_keeps_per_layer_counts():
    m = Mask({"a": torch.rand(40, 30, generator=torch.Generator().manual_seed(0)) > 0.8, "b": torch.ones(5, 5)})
    r = m.random_like(3)
    assert {n: int(r[n].sum()) for n in r} == {n: int(m[n].sum()) for n in m}
    assert r != m and r == m.random_like(3)


def test_save_load_round_trip_with_sparsity_report(tmp_path, mlp):
    keep = torch.zeros(100, 300, dtype=torch.bool)
    keep[:, :30] = True
    m = Mask({"1.weight": torch.ones(300, 64), "3.weight": keep})
    path = m.save(tmp_path / "mask.pt")
    back = Mask.load(path, mlp)
    assert back == m
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["layers"]["3.weight"]["sparsity"] == pytest.approx(0.9)
    assert report["layers"]["1.weight"]["sparsity"] == 0.0
    assert report["nonzero"] == 300 * 64 + 3000 and report["total"] == 300 * 64 + 30000


def test_load_rejects_damaged_or_foreign_files(tmp_path, mlp):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(MaskError, match="not a readable mask"):
        Mask.load(bad)
    with pytest.raises(MaskError, match="not found"):
        Mask.load(tmp_path / "missing.pt")
    torch.save({"1.weight": torch.full((300, 64), 2.0)}, tmp_path / "twos.pt")
    with pytest.raises(MaskError, match="other than 0 and 1"):
        Mask.load(tmp_path / "twos.pt")
    torch.save({"1.weight": torch.ones(3, 3)}, tmp_path / "small.pt")
    with pytest.raises(MaskError, match="shape"):
        Mask.load(tmp_path / "small.pt", mlp)
