"""Unit checks of targets, data and recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.data import digits, load_data
from edgekit.errors import EdgekitError, InputError, SettingsError
from edgekit.pipeline import load_recipe
from edgekit.targets import load_target


def test_targets_load_with_facts():
    rpi = load_target("rpi4")
    assert (rpi.arch, rpi.cpu, rpi.cores, rpi.memory_mb) == ("aarch64", "Cortex-A72", 4, 4096)
    assert "neon" in rpi.simd and "dotprod" not in rpi.simd
    assert "dotprod" in load_target("android-arm64").simd
    assert "simd128" in load_target("wasm").simd and load_target("wasm").threads == 1
    host = load_target("host")
    assert host.is_host and host.cores >= 1 and host.arch


def test_target_unknown_key_is_an_error(tmp_path: Path):
    src = (Path(__file__).parents[1] / "targets" / "rpi4.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace('cpu = "Cortex-A72"', 'cpu = "Cortex-A72"\nturbo = true'))
    with pytest.raises(SettingsError, match="unknown keys.*turbo"):
        load_target(str(bad))


def test_digits_split_is_fixed_and_labelled():
    d = digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.x_train) + len(d.x_test) == 1797
    assert d.labelled and d.quality_metric == "accuracy"
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert np.array_equal(digits.__wrapped__().y_test, d.y_test)


def test_npz_and_image_folder(tmp_path: Path):
    from PIL import Image

    x = np.random.default_rng(0).random((20, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    d = load_data(str(tmp_path / "d.npz"), (1, 3, 16, 16))
    assert d.labelled and len(d.x_train) + len(d.x_test) == 20
    with pytest.raises(InputError, match="expects"):
        load_data(str(tmp_path / "d.npz"), (1, 3, 32, 32))
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((np.ones((20, 20, 3)) * 40 * i).astype(np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    d = load_data(str(tmp_path / "imgs"), (1, 3, 16, 16))
    assert d.x_train.shape[1:] == (3, 16, 16) and set(np.concatenate([d.y_train, d.y_test])) == {0, 1}
    u = load_data(None, (1, 3, 16, 16))
    assert not u.labelled and u.quality_metric == "agreement"


def test_recipe_validation(tmp_path: Path):
    r = load_recipe("basic")
    assert [s.name for s in r.stages] == ["baseline", "export", "verify", "measure"]
    bad = tmp_path / "r.yaml"
    bad.write_text("stages:\n  - measure: {runz: 3}\n")
    with pytest.raises(SettingsError, match="unknown settings.*runz"):
        load_recipe(str(bad))
    bad.write_text("stages:\n  - measur: {}\n")
    with pytest.raises(EdgekitError, match="closest: measure"):
        load_recipe(str(bad))
    with pytest.raises(SettingsError, match="at least 20"):
        load_recipe("basic", {"measure": {"runs": 3}})
