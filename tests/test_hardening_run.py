"""Issue 16, the run folder: marked before anything is written, never someone else's folder, inputs identified by
content, no temporary files left behind, shipped profiles left alone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT, one_line_error, run_cli


@pytest.fixture(scope="module")
def baseline_recipe(tmp_path_factory) -> Path:
    """A recipe of one quick stage, and the check switched off (it still starts, finishes and is reused like any
    stage; what it finds is tests/test_check.py's, and it would cost each run its TFLite and ExecuTorch imports)."""
    path = tmp_path_factory.mktemp("recipes") / "baseline.yaml"
    path.write_text("stages:\n  - check:\n      enabled: false\n  - baseline\n")
    return path


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


SECRET_URI = "ssh://pi@raspberrypi:2222?identity=/home/me/.ssh/secret_key&known_hosts=/home/me/kh"
STALE = ("artifacts/.model_fp32.onnx.k3j4h5g6.tmp", ".report.json.abcd1234.tmp")


def _digits_npz(path: Path, flip: bool) -> Path:
    from edgekit.data import digits

    d = digits()
    y = d.y_train if not flip else (d.y_train + 1) % 10
    y_test = d.y_test if not flip else (d.y_test + 1) % 10
    np.savez(path, x=d.x_train, y=y, x_test=d.x_test, y_test=y_test)
    return path


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, baseline_recipe: Path) -> dict:
    """One run folder, three runs of `compress` through a pipe (as in CI): a first run into an existing empty
    folder; torn temporary files planted; the same command again; then data.npz replaced at the same path with
    other labels and the command once more."""
    tmp = tmp_path_factory.mktemp("three")
    data, out = _digits_npz(tmp / "data.npz", flip=False), tmp / "run"
    out.mkdir()
    args = ["compress", "--recipe", str(baseline_recipe), "--data", str(data), "--device", SECRET_URI, "--out",
            str(out)]
    runs = {}
    for name in ("first", "again", "new_labels"):
        if name == "again":
            (out / "artifacts").mkdir(exist_ok=True)
            for rel in STALE:
                (out / rel).write_bytes(b"half a file")
            (out / "notes.tmp.txt").write_text("not ours")  # not an atomic_path name: kept
        if name == "new_labels":
            _digits_npz(data, flip=True)  # same path, same size, new labels
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        runs[name] = {"stderr": r.stderr, "report": json.loads((out / "report.json").read_text()),
                      "stale_left": [rel for rel in STALE if (out / rel).exists()],
                      "markdown": (out / "report.md").read_text()}
    runs["out"] = out
    return runs


def _accuracy(report: dict) -> float:
    return next(s for s in report["stages"] if s["name"] == "baseline")["metrics"]["accuracy"]


# --- 7: a run folder is marked; a folder that is not one is never written into ------------------------------------

def test_existing_folder_that_is_not_a_run_folder_is_refused(tmp_path: Path, baseline_recipe: Path):
    mine = tmp_path / "documents"
    mine.mkdir()
    for name, text in (("report.md", "my own notes"), ("report.json", '{"mine": 1}'), ("artifacts.png", "png")):
        (mine / name).write_text(text)
    before = _snapshot(mine)
    r = run_cli("compress", "--recipe", str(baseline_recipe), "--out", str(mine))
    one_line_error(r, str(mine), "not an edgekit run folder")
    assert _snapshot(mine) == before


def test_an_empty_folder_becomes_a_marked_run_folder(three_runs: dict):
    from edgekit.runfolder import MARKER

    assert (three_runs["out"] / MARKER).is_file() and (three_runs["out"] / "report.json").is_file()


def test_marker_rules(tmp_path: Path):
    from edgekit.errors import EdgekitError
    from edgekit.runfolder import MARKER, check_run_folder, claim_run_folder

    claim_run_folder(tmp_path / "a")
    assert (tmp_path / "a" / MARKER).is_file()
    (tmp_path / "a" / "report.json").write_text("{}")
    claim_run_folder(tmp_path / "a")  # marked: may be written again
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("x")
    with pytest.raises(EdgekitError, match="not an edgekit run folder"):
        check_run_folder(tmp_path / "b")
    (tmp_path / "c").write_text("a file")
    with pytest.raises(EdgekitError, match="not a folder"):
        check_run_folder(tmp_path / "c")
    assert not (tmp_path / "b" / MARKER).exists()
    # A run folder of an edgekit without markers (report.json with edgekit's header) stays usable.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text('{"schema": 1, "edgekit_version": "0.1.0"}')
    claim_run_folder(tmp_path / "old")
    assert (tmp_path / "old" / MARKER).is_file()


def test_the_session_run_folder_is_marked(digits_run: Path):
    from edgekit.runfolder import MARKER

    assert (digits_run / MARKER).is_file()


# --- 6 (security): report.json keeps only user and host of a --device URI ------------------------------------------

def test_report_stores_host_and_user_only(three_runs: dict):
    for run in ("first", "again", "new_labels"):
        text = json.dumps(three_runs[run]["report"]) + three_runs[run]["markdown"]
        assert "secret_key" not in text and "/home/me" not in text
        assert three_runs[run]["report"]["device"] == "ssh://pi@raspberrypi:2222"


# --- 8: prune --fresh loses nothing when the inputs are bad --------------------------------------------------------

def test_prune_fresh_checks_inputs_before_deleting(tmp_path: Path):
    from edgekit.runfolder import claim_run_folder

    out = tmp_path / "pruned"
    claim_run_folder(out)
    (out / "prune").mkdir()
    (out / "prune" / "round-000.pt").write_bytes(b"an earlier run's round")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    r = run_cli("prune", str(bad), "--data", "digits", "--fresh", "--out", str(out))
    one_line_error(r, "bad.onnx")
    assert (out / "prune" / "round-000.pt").read_bytes() == b"an earlier run's round"


def test_fresh_run_ignores_round_checkpoints(tmp_path: Path):
    """--fresh (the pipeline's resume=False, ctx.resume) reaches the prune stage: it starts its rounds over."""
    import torch

    from edgekit import stages
    from edgekit.data import digits
    from edgekit.targets import load_target
    from edgekit.zoo import digits_mlp

    module = stages.get("prune")
    settings = stages.settings_from_dict(module.Settings, {
        "rounds": 1, "epochs": 1, "reinit_control": False, "random_mask_control": False, "target_rules": "off"})
    records: list[dict] = []

    def run(resume: bool) -> int | None:
        ctx = SimpleNamespace(data=digits(), target=load_target("host"), out=tmp_path, progress=None, resume=resume,
                              bundle=SimpleNamespace(input_shape=(1, 1, 8, 8), name="edgekit:digits_mlp"),
                              add_section=lambda *a, **k: None, record=lambda **k: records.append(k))
        torch.manual_seed(0)  # the same initial model each time: its hash keys the round checkpoints
        module.run(digits_mlp(), settings, ctx)
        return records[-1]["details"]["resumed_from_round"]

    assert run(resume=True) is None and (tmp_path / "prune" / "round-001.pt").is_file()
    assert run(resume=True) == 1  # a plain rerun resumes the finished rounds
    # Before, the stage resumed them even when the run was asked to be fresh.
    assert run(resume=False) is None


# --- 9: inputs are identified by content ---------------------------------------------------------------------------

def test_replacing_data_at_the_same_path_reruns_the_stages(three_runs: dict):
    first, new = three_runs["first"]["report"], three_runs["new_labels"]["report"]
    assert _accuracy(first) > 0.9 and _accuracy(new) < 0.2, (_accuracy(first), _accuracy(new))
    assert "reused" not in three_runs["new_labels"]["stderr"].split("stage baseline")[-1]


def test_content_ids(tmp_path: Path, monkeypatch):
    from edgekit import fileio
    from edgekit.runfolder import input_identity

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.onnx"
    f.write_bytes(b"one")
    first = fileio.sha256_cached(f)
    assert first == fileio.sha256_file(f)
    f.write_bytes(b"two")  # same size: the cache key (size, mtime, ctime, inode) still changes
    assert fileio.sha256_cached(f) == fileio.sha256_file(f) != first
    assert input_identity(str(f), None) != input_identity(None, None)
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.png").write_bytes(b"a")
    a = input_identity(None, str(tmp_path / "images"))
    (folder / "1.png").write_bytes(b"b")
    assert a and input_identity(None, str(tmp_path / "images")) != a
    # A factory is identified by its module's source.
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "mymodels.py").write_text("def net():\n    return 1\n")
    monkeypatch.syspath_prepend(str(pkg))
    one = input_identity("mymodels:net", None)
    (pkg / "mymodels.py").write_text("def net():\n    return 2\n")
    assert one and input_identity("mymodels:net", None) != one
    assert input_identity("torchvision:resnet18", "digits") == []


# --- 10: no temporary files left; artifacts copied atomically ------------------------------------------------------

def test_leftover_temporary_files_are_removed(three_runs: dict):
    assert three_runs["again"]["stale_left"] == []
    assert (three_runs["out"] / "notes.tmp.txt").exists()


def test_quantize_copies_artifacts_atomically(tmp_path: Path, monkeypatch):
    from edgekit.stages import quantize

    art = tmp_path / "artifacts"
    art.mkdir()
    dest = art / "model_int8.onnx"
    dest.write_bytes(b"the previous, complete artifact")
    src = tmp_path / "candidate.onnx"
    src.write_bytes(b"x" * 1000)

    def torn_copy(a, b, *args, **kwargs):
        Path(b).write_bytes(Path(a).read_bytes()[:10])
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfile", torn_copy)
    monkeypatch.setattr(shutil, "copy2", torn_copy)
    monkeypatch.setattr(shutil, "copy", torn_copy)
    cand = SimpleNamespace(path=src, policy=SimpleNamespace(layers={}), agreement=1.0, drop=0.0, quality=1.0,
                           sqnr_db=40.0)
    ctx = SimpleNamespace(artifacts_dir=art, add_artifact=lambda *a, **k: None)
    with pytest.raises(OSError):
        quantize._write_outputs(ctx, [SimpleNamespace(int8=cand, chosen=cand, fmt="onnx")])
    assert dest.read_bytes() == b"the previous, complete artifact"
    assert sorted(p.name for p in art.iterdir()) == ["model_int8.onnx"]


# --- 15 (command line): progress lines without a terminal ----------------------------------------------------------

def test_stage_lines_on_a_pipe_and_reuse_is_said(three_runs: dict):
    first, again = three_runs["first"]["stderr"], three_runs["again"]["stderr"]
    assert "stage baseline: started" in first and "stage baseline: done" in first, first
    assert "stage check: started" in first and "reused" not in first
    reused = [ln for ln in again.splitlines() if "reused" in ln]
    assert len(reused) == 2 and "stage baseline" in reused[-1], again


# --- 11: profile --validate leaves the shipped profiles alone ------------------------------------------------------

def _tracked_profiles() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (ROOT / "profiles").rglob("*.json")}


def test_validate_writes_into_the_named_folder(tmp_path: Path, digits_run: Path, monkeypatch):
    before = _tracked_profiles()
    out = tmp_path / "validation"
    r = run_cli("profile", "--validate", "--variants", "5", "--train", "2", "--runs", "20", "--warmup", "1",
                "--profile-runs", "1", "--model", str(digits_run / "artifacts" / "model_fp32.onnx"), "--out",
                str(out), env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(summary["profile"]).resolve().is_relative_to(out.resolve())
    assert list(out.rglob("*.json")) and _tracked_profiles() == before


def test_validate_defaults_to_a_run_folder_not_the_shipped_profiles():
    from edgekit.commands.profile import validate_out_dir

    default = validate_out_dir(None)
    assert not default.resolve().is_relative_to((ROOT / "profiles").resolve())
    assert default.parts[0] == "runs"
    assert os.fspath(validate_out_dir(Path("x"))) == "x"

