"""Bad input: one line, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli


def _assert_clean_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_target_names_closest(tmp_path: Path):
    r = run_cli("compress", "--target", "rpi", "--out", str(tmp_path / "x"))
    _assert_clean_error(r, "unknown target 'rpi'", "rpi4")
    assert not (tmp_path / "x").exists()


def test_unknown_model_names_closest(tmp_path: Path):
    r = run_cli("compress", "torchvision:mobilenet_v9", "--out", str(tmp_path / "x"))
    _assert_clean_error(r, "unknown model", "mobilenet_v")
    r = run_cli("compress", "mobilenetv2", "--out", str(tmp_path / "x"))
    _assert_clean_error(r, "unknown model")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_truncated_model_file(tmp_path: Path, suffix: str):
    import numpy as np
    import torch

    from edgekit.export import onnx as onnx_export
    from edgekit.zoo import digits_cnn

    source = tmp_path / f"ok{suffix}"
    if suffix == ".onnx":
        onnx_export.export(digits_cnn().eval(), np.zeros((1, 1, 8, 8), np.float32), source)
    else:
        torch.export.save(torch.export.export(digits_cnn().eval(), (torch.zeros(1, 1, 8, 8),)), source)
    data = Path(source).read_bytes()
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "run"
    r = run_cli("compress", str(bad), "--out", str(out))
    _assert_clean_error(r, str(bad))
    assert not out.exists()


def test_corrupt_weights_file(tmp_path: Path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    r = run_cli("compress", "torchvision:mobilenet_v2", "--weights", str(bad), "--out", str(tmp_path / "run"))
    _assert_clean_error(r, "w.pt")
    assert not (tmp_path / "run").exists()


def test_mismatched_weights_file(tmp_path: Path):
    import torch

    from edgekit.zoo import digits_mlp

    w = tmp_path / "mlp.pt"
    torch.save(digits_mlp().state_dict(), w)
    r = run_cli("compress", "torchvision:mobilenet_v2", "--weights", str(w), "--out", str(tmp_path / "run"))
    _assert_clean_error(r, "does not match torchvision:mobilenet_v2")


def test_unpickling_payload_is_refused(tmp_path: Path):
    """A weights file that carries arbitrary pickled objects is refused (weights_only=True), never executed."""
    import torch

    w = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(str(marker))}, w)
    r = run_cli("compress", "torchvision:mobilenet_v2", "--weights", str(w), "--out", str(tmp_path / "run"))
    _assert_clean_error(r, "evil.pt")
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_factory_without_shape_asks_for_input_shape(tmp_path: Path):
    r = run_cli("compress", "torch.nn:Identity", "--trust-model-code", "--out", str(tmp_path / "run"))
    _assert_clean_error(r, "--input-shape")


def test_bad_input_shape_and_data(tmp_path: Path):
    _assert_clean_error(run_cli("compress", "--input-shape", "1,3,abc", "--out", str(tmp_path / "r")), "--input-shape")
    _assert_clean_error(run_cli("compress", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r")),
                        "missing.npz")


def test_rerun_with_corrupt_input_keeps_existing_run(digits_run: Path, tmp_path: Path):
    """A failed run into an existing folder leaves what was already written untouched."""
    import shutil

    out = tmp_path / "kept"
    shutil.copytree(digits_run, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    r = run_cli("compress", str(bad), "--out", str(out))
    _assert_clean_error(r)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
