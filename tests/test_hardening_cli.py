"""Issue 16, the command line: usage mistakes are one line and exit 2 on every sub-command, settings are type-checked,
gates never pass on NaN, bad data is one line, progress shows without a terminal, options mean one thing."""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli
from edgekit.errors import EdgekitError, InputError, SettingsError


def _main(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """`edgekit ARGS` in this process (fast enough to run every sub-command several times)."""
    import signal

    from edgekit import cli

    monkeypatch.setattr(sys, "argv", ["edgekit", *args])
    monkeypatch.setenv("COLUMNS", "200")
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler; pytest keeps its
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out, err = capsys.readouterr()
    return code, out, err


def _commands() -> dict:
    import typer

    from edgekit import cli

    cli._register_commands()
    return typer.main.get_command(cli.app).commands


def _usage_cases(name: str, cmd) -> list[tuple[str, list[str]]]:
    """(case, argv) for a wrong option, a missing argument and a bad value of one sub-command."""
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    required = [("x.tflite" if "artifact" in p.name else "x") for p in args if p.required]
    opts = [p for p in cmd.params if p.param_type_name == "option" and not p.is_flag and p.name != "help"]
    cases = [("wrong option", [name, *required, "--no-such-option"])]
    if required:
        cases.append(("missing argument", [name]))
    elif opts:
        cases.append(("missing argument", [name, opts[0].opts[0]]))
    else:
        cases.append(("missing argument", [name, "unexpected-extra-argument"]))
    numeric = [p for p in opts if getattr(p, "bare_type", None) in (int, float) or
               type(getattr(p, "type", None)).__name__ in ("IntParamType", "FloatParamType")]
    if numeric:
        cases.append(("bad value", [name, *required, numeric[0].opts[0], "not-a-number"]))
    elif required:
        cases.append(("bad value", [name, "/no/such/file/anywhere"]))
    else:
        cases.append(("bad value", [name, "--no-such-option=1"]))
    return cases


# --- 12: usage mistakes --------------------------------------------------------------------------------------------

def test_every_subcommand_usage_mistake_is_one_line_and_exit_2(capsys, monkeypatch):
    commands = _commands()
    assert {"compress", "report", "prune", "profile", "quantize", "adapt", "decompose", "check"} <= set(commands)
    bad = []
    for name, cmd in sorted(commands.items()):
        for case, argv in _usage_cases(name, cmd):
            code, out, err = _main(capsys, monkeypatch, *argv)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            if code != 2 or len(lines) != 1 or "Traceback" in err or not lines[0].startswith("edgekit"):
                bad.append((name, case, argv, code, err[-300:]))
    assert not bad, bad


def test_usage_errors_as_a_user_sees_them(tmp_path: Path):
    r = run_cli("compress", "--taget", "rpi4")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--taget" in lines[0] and "--target" in lines[0], r.stderr
    r = run_cli()
    assert r.returncode == 0 and "Usage" in r.stdout and "compress" in r.stdout and not r.stderr.strip(), r.stderr
    r = run_cli("--version")
    from edgekit import __version__

    assert r.returncode == 0 and r.stdout.strip() == f"edgekit {__version__}"


@pytest.mark.parametrize("value", ["baseline.max_inputs=zero", "baseline.max_inputs=1.5", "baseline.max_inputs=true",
                                   "measure.runs=!!python/object/apply:os.system ['touch PWNED']",
                                   "export.formats=!!binary aGVsbG8=", "export.formats=[onnx", "export.formats=onnx",
                                   "quantize.trials=!!int 3", "baseline.max_inputs={a: 1}"])
def test_set_values_are_type_checked(capsys, monkeypatch, tmp_path: Path, value: str):
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(capsys, monkeypatch, "compress", "--set", value, "--out", str(tmp_path / "run"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "run").exists()


def test_settings_types_in_one_place():
    from edgekit import stages

    get = stages.settings_from_dict
    base, quant, prune = (stages.get(n).Settings for n in ("baseline", "quantize", "prune"))
    for values in ({"max_inputs": "zero"}, {"max_inputs": 2.5}, {"max_inputs": True}, {"max_inputs": None}):
        with pytest.raises(SettingsError, match="max_inputs"):
            get(base, values, "stage baseline")
    assert get(quant, {"max_quality_drop": 2}).max_quality_drop == 2.0
    assert isinstance(get(quant, {"max_quality_drop": 2}).max_quality_drop, float)
    assert get(quant, {"formats": ["onnx"]}).formats == ("onnx",)
    with pytest.raises(SettingsError, match="formats"):
        get(quant, {"formats": [1]})
    assert get(prune, {"layers": "conv"}).layers == "conv" and get(prune, {"layers": ["a", "b"]}).layers == ("a", "b")
    with pytest.raises(SettingsError, match="layers"):
        get(prune, {"layers": 3})


def test_typer_is_pinned():
    text = (ROOT / "pyproject.toml").read_text()
    assert any(line.strip().startswith('"typer==') for line in text.splitlines()), "pin typer: it bundles click"


# --- 13: gates -----------------------------------------------------------------------------------------------------

def test_gates_fail_on_nan_inf_and_missing_values():
    from edgekit.gates import check_gates, parse_gate

    nan = {"summary": {"quality_drop": math.nan, "p50_ms": math.inf}, "artifacts": []}
    assert check_gates(nan, ["quality_drop>1.0"]) and check_gates(nan, ["quality_drop<1.0"])
    assert check_gates(nan, ["p50_ms>20"]) and check_gates(nan, ["p50_ms<=1e9"])
    assert check_gates({"summary": {}, "artifacts": []}, ["quality_drop>1.0"])
    arts = {"summary": {}, "artifacts": [{"path": "a", "latency": {"p50_ms": 1.0}},
                                         {"path": "b", "latency": {"p50_ms": math.nan}}]}
    assert check_gates(arts, ["p50_ms>20"])
    assert not check_gates({"summary": {"quality_drop": 0.5}, "artifacts": []}, ["quality_drop>1.0"])
    for text in ("quality_drop>nan", "p50_ms<inf", "p50_ms>-inf", "quality_drop>NaN", "x>1e999"):
        with pytest.raises(SettingsError):
            parse_gate(text)


def test_nan_report_fails_its_gate_on_the_command_line(digits_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    report = json.loads((run / "report.json").read_text())
    report["summary"]["quality_drop"] = math.nan
    (run / "report.json").write_text(json.dumps(report))
    r = run_cli("report", str(run), "--fail-on", "quality_drop>1.0")
    assert r.returncode == 1 and "quality_drop" in r.stderr, r.stderr
    r = run_cli("report", str(run), "--fail-on", "quality_drop>nan")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


# --- 14: bad data --------------------------------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size (PIL checks it before decoding anything)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _image_folder(tmp_path: Path, bad: bytes) -> Path:
    from PIL import Image

    root = tmp_path / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(root / cls / "ok.png")
    (root / "b" / "bad.png").write_bytes(bad)
    return root


def test_image_bomb_and_broken_images_are_one_line(tmp_path: Path, monkeypatch):
    from PIL import Image

    from edgekit.data import load_data

    bomb = _image_folder(tmp_path / "bomb", _png_header(40000, 40000))
    with pytest.raises(InputError, match="bad.png"):
        load_data(str(bomb), (1, 1, 8, 8))
    r = run_cli("compress", "--data", str(bomb), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "bad.png" in r.stderr, r.stderr
    truncated = _image_folder(tmp_path / "trunc", _png_header(64, 64)[:40])
    with pytest.raises(InputError, match="bad.png"):
        load_data(str(truncated), (1, 1, 8, 8))
    # Above PIL's pixel limit but below its hard error: refused too (a warning would be a second line).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    big = tmp_path / "big"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, "PNG")
    with pytest.raises(InputError, match="bad.png"):
        load_data(str(_image_folder(big, buf.getvalue())), (1, 1, 8, 8))


def test_empty_data_is_one_line(tmp_path: Path):
    from edgekit.data import load_data

    x = np.zeros((10, 1, 8, 8), np.float32)
    cases = {"no_rows": dict(x=x[:0]), "no_test_rows": dict(x=x, y=np.zeros(10, np.int64), x_test=x[:0],
                                                            y_test=np.zeros(0, np.int64)),
             "scalar": dict(x=np.float32(1.0))}
    for name, arrays in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(InputError, match=name):
            load_data(str(path), (1, 1, 8, 8))


def test_malformed_adapter_metadata_is_one_line(tmp_path: Path):
    import torch
    from safetensors.torch import save_file

    from edgekit.adapters import load_adapter
    from edgekit.adapters.io import FORMAT
    from edgekit.zoo import digits_mlp

    metas = {"missing": {"format": FORMAT}, "not_json": {"format": FORMAT, "edgekit": "{not json"},
             "list": {"format": FORMAT, "edgekit": "[1, 2]"},
             "wrong_types": {"format": FORMAT, "edgekit": json.dumps({"method": 3, "rank": "four", "alpha": None,
                                                                      "layers": "Linear"})},
             "unknown_method": {"format": FORMAT, "edgekit": json.dumps({"method": "evil", "rank": 4, "alpha": 0,
                                                                         "layers": ["Linear"]})}}
    for name, meta in metas.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({"w": torch.zeros(1)}, str(path), metadata=meta)
        with pytest.raises(EdgekitError, match=name):
            load_adapter(digits_mlp(), path)


def test_device_uri_options_are_checked(tmp_path: Path):
    from edgekit.devices.uri import parse_device_uri

    for uri in ("ssh://host?timeout=abc", "ssh://host?timeout=-5", "ssh://host?accept_new=maybe",
                "ssh://host?timeout="):
        with pytest.raises(SettingsError, match="device"):
            parse_device_uri(uri)
    assert parse_device_uri("ssh://pi@host?timeout=30").ssh_target().timeout == 30
    r = run_cli("compress", "--device", "ssh://host?timeout=abc", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "timeout" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


# --- 15: progress without a terminal -------------------------------------------------------------------------------

def test_plain_progress_prints_stage_round_and_trial_lines():
    from edgekit.progress import PlainProgress

    stream = io.StringIO()
    with PlainProgress(stream) as p:
        stages = p.add_task("stages", total=2)
        p.update(stages, description="stage prune")
        rounds = p.add_task("lottery rounds", total=3)
        for _ in range(3):
            p.advance(rounds)
        p.remove_task(rounds)
        epochs = p.add_task("training", total=40)
        for _ in range(40):
            p.advance(epochs)
        p.remove_task(epochs)
        p.advance(stages)
        trials = p.add_task("policy search", total=2)
        p.advance(trials)
        p.advance(trials)
        p.update(stages, description="stage export: reused (finished in an earlier run)", advance=1)
    lines = stream.getvalue().splitlines()
    assert any("stage prune" in ln and "start" in ln for ln in lines)
    assert any("stage prune" in ln and "done" in ln for ln in lines)
    assert [ln.split("] ", 1)[1].split(":")[0] for ln in lines if "lottery rounds" in ln] == ["lottery rounds"] * 3
    assert [ln.rsplit("[", 1)[1] for ln in lines if "lottery rounds" in ln] == ["1/3]", "2/3]", "3/3]"]
    assert sum("policy search" in ln and "/2" in ln for ln in lines) == 2
    assert sum("training" in ln for ln in lines) <= 2  # epochs: a start and an end line, not 40
    reused = [ln for ln in lines if "reused" in ln]
    assert len(reused) == 1 and "stage export" in reused[0] and reused[0].endswith("[2/2]"), lines


def test_progress_goes_plain_when_stderr_is_not_a_terminal(monkeypatch):
    from edgekit import cli
    from edgekit.progress import PlainProgress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(cli.progress_bar(), PlainProgress)


# --- 16: one meaning per option, defaults, version, the artifact table ---------------------------------------------

def test_device_means_a_measurement_device_everywhere():
    for name, cmd in _commands().items():
        for p in cmd.params:
            if "--device" in getattr(p, "opts", []):
                assert "ssh://" in (p.help or ""), (name, p.help)
            if "--set" in getattr(p, "opts", []):
                assert "stage.field=value" in (p.help or ""), (name, p.help)
    opts = {o for p in _commands()["prune"].params for o in getattr(p, "opts", [])}
    assert "--torch-device" in opts and "--device" not in opts
    assert "--set" in {o for p in _commands()["quantize"].params for o in getattr(p, "opts", [])}


def test_set_takes_stage_field_everywhere(capsys, monkeypatch, tmp_path: Path):
    for cmd in ("compress", "prune", "quantize", "adapt", "decompose"):
        code, _, err = _main(capsys, monkeypatch, cmd, "--set", "lr=0.1", "--out", str(tmp_path / cmd))
        assert code == 2 and "stage.field=value" in err and len(err.strip().splitlines()) == 1, (cmd, err)


def test_help_shows_the_stage_defaults(capsys, monkeypatch):
    from edgekit import stages

    for cmd, options in (("adapt", ("rank", "epochs", "method")), ("decompose", ("ratio", "method")),
                         ("prune", ("rounds", "rate", "epochs"))):
        _, out, _ = _main(capsys, monkeypatch, cmd, "--help")
        defaults = {f.name: f.default for f in __import__("dataclasses").fields(stages.get(cmd).Settings)}
        for o in options:
            assert f"[default: ({defaults[o]})]" in out or f"[default: {defaults[o]}]" in out, (cmd, o)


def test_artifact_table_fits_80_columns_without_splitting_words():
    from rich.console import Console

    from edgekit.commands._shared import print_summary as _print_summary

    names = ["model_fp32.onnx", "model_fp32.tflite", "model_int8.onnx", "model_mixed_policy_search.tflite",
             "model_sparse_xnnpack_ready.tflite", "web/model_bundle_for_the_browser"]
    report = {"model": "torchvision:mobilenet_v3_large", "target": "android-arm64", "artifacts": [
        {"path": f"artifacts/{n}", "size_bytes": 12_345_678, "verification": {"passed": True, "max_abs_err": 1.2e-6},
         "latency": {"source": "predicted", "p50_ms": 123.456}} for n in names]}
    buf = io.StringIO()
    _print_summary(Console(file=buf, width=80, force_terminal=False, color_system=None), report, Path("runs/x"))
    lines = buf.getvalue().splitlines()
    assert all(len(ln) <= 80 for ln in lines), max(lines, key=len)
    table = "\n".join(lines)
    for n in names:
        assert n in table, n
    assert "predicted" in table and "123.5" in table


# --- 17: the docs say what the code does ---------------------------------------------------------------------------

def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_docs_name_existing_settings_and_gates_that_a_good_model_passes(digits_run: Path):
    import dataclasses
    import re

    from edgekit import stages
    from edgekit.gates import check_gates

    fields = {n: {f.name for f in dataclasses.fields(stages.get(n).Settings)} for n in stages.available()}
    adapters = (ROOT / "docs" / "adapters.md").read_text()
    decompose = _section(adapters, "## decompose")
    others = set().union(*(v for k, v in fields.items() if k != "decompose")) - fields["decompose"]
    stale = {w for w in re.findall(r"`([a-z_]+)`", decompose) if w in others}
    assert not stale, stale
    quant = (ROOT / "docs" / "quantization.md").read_text()
    gates = re.findall(r"--fail-on '([^']+)'", quant) + re.findall(r"works \(`([^`]+)`\)", quant)
    report = json.loads((digits_run / "report.json").read_text())
    assert gates and not check_gates(report, gates), check_gates(report, gates)
    ci = (ROOT / ".ci" / "run").read_text()
    order = "before" if ci.index("edgekit quantize") < ci.index("make test") else "after"
    assert f"{order} `make test`" in quant
