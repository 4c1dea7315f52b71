"""One pipeline: the stage contract, invalidation along a full chain, the baseline-anchored summary and gates, the
run folder holding only what the report lists, the auto planner, and the Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from edgekit.errors import SettingsError

CHAIN = {"stages": [
    {"baseline": {}},
    {"export": {"formats": ["onnx"]}},  # made before the model changes: must end up in superseded/
    {"prune": {"rounds": 1, "epochs": 2, "reinit_control": False, "random_mask_control": False}},
    {"sparsify": {"oneshot_sparsity": 0.0}},
    {"decompose": {"method": "tucker", "ratio": 0.3, "epochs": 2}},
    {"quantize": {"trials": 3, "timing_runs": 5, "final_runs": 20, "max_quality_drop": 5.0}},
    {"export": {"formats": ["onnx"]}}, {"verify": {}}, {"measure": {"runs": 20}}]}  # ONNX keeps the test quick


def _one_line_error(r, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_refused_order_is_one_line_before_anything_runs(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - baseline: {}\n  - export: {}\n  - quantize: {}\n  - prune: {}\n"
                      "  - verify: {}\n  - measure: {}\n")
    out = tmp_path / "run"
    r = run_cli("compress", "--recipe", str(recipe), "--out", str(out))
    _one_line_error(r, "prune (stage 5)", "quantize (stage 4)", "the order that works: prune before quantize")
    assert not out.exists()


@pytest.mark.parametrize(("stages", "needles"), [
    (["baseline", "prune", {"decompose": {"masks": "drop"}}, "export", "verify", "measure"],
     ["decompose (stage 3) after prune (stage 2)", "decompose before prune", "masks=keep"]),
    (["baseline", "prune", "adapt", "export", "verify"], ["adapt (stage 3) after prune", "fills the pruned weights"]),
    (["export", "quantize", {"sparsify": {"oneshot_sparsity": 0.5}}, "verify"],
     ["sparsify (stage 3) changes the model after quantize (stage 2)", "sparsify before quantize"]),
    (["baseline", "verify", "export"], ["verify (stage 2) needs artifacts", "export before verify"]),
    (["export", "measure"], ["measure (stage 2) times verified artifacts", "export, verify, measure"]),
    (["export", "verify", "quantize", "measure"], ["quantize (stage 3) writes artifacts after verify"]),
])
def test_contract_refuses_orders_that_cannot_work(stages, needles):
    from edgekit.pipeline import load_recipe

    with pytest.raises(SettingsError) as e:
        load_recipe({"stages": stages})
    assert "\n" not in str(e.value)
    for n in needles:
        assert n in str(e.value)
    # Where a later stage keeps the earlier one's work, the order is accepted.
    load_recipe(CHAIN)
    load_recipe({"stages": ["baseline", "prune", {"decompose": {"masks": "skip"}}, "export", "verify", "measure"]})


def test_set_for_a_stage_the_recipe_lacks_lists_its_stages(tmp_path: Path):
    r = run_cli("compress", "--recipe", "basic", "--set", "prune.rounds=2", "--out", str(tmp_path / "a"))
    _one_line_error(r, "no stage 'prune'", "its stages: check, baseline, export, verify, measure")
    r = run_cli("compress", "--set", "prune.rounds=2", "--out", str(tmp_path / "b"))
    _one_line_error(r, "--recipe auto did not plan prune", "x86")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_labels_are_checked_before_any_stage_runs(tmp_path: Path):
    from edgekit.data import digits

    npz = tmp_path / "x.npz"
    np.savez(npz, x=digits().x_test[:80])
    r = run_cli("compress", "--recipe", "lottery", "--data", str(npz), "--out", str(tmp_path / "run"))
    _one_line_error(r, "prune (stage 3)", "needs labelled data")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory) -> dict:
    """The issue's full chain on the digits CNN with small budgets (about a minute on 2 cores)."""
    from edgekit import api
    from edgekit.runfolder import MARKER

    out = tmp_path_factory.mktemp("chain") / "run"
    (out / "artifacts").mkdir(parents=True)
    (out / MARKER).write_text("an earlier edgekit run folder\n")
    (out / "artifacts" / "model_decomposed_old.onnx").write_bytes(b"from an earlier recipe")
    result = api.compress(None, "host", recipe=CHAIN, out=out)
    return {"out": out, "result": result, "report": json.loads((out / "report.json").read_text())}


def test_chain_verifies_every_artifact_against_the_model_it_was_made_from(chain_run):
    report = chain_run["report"]
    names = [s["name"] for s in report["stages"]]
    assert names == ["check", "baseline", "export", "prune", "sparsify", "decompose", "quantize", "export", "verify",
                     "measure"]
    arts = report["artifacts"]
    assert {(a["format"], a["precision"]) for a in arts} >= {("onnx", "fp32"), ("onnx", "int8")}
    for a in arts:  # every final artifact is of the decomposed model (stage 6) and verified against it
        assert a["model_version"] == names.index("decompose") and a["verification"]["passed"], a["path"]
        assert "after decompose" in a["verification"]["reference"]
    # quantize's float reference is the float model it quantised (the decomposed one), not an earlier export.
    quant = report["stages"][names.index("quantize")]
    decompose = report["stages"][names.index("decompose")]
    assert quant["metrics"]["quality_before"] == pytest.approx(decompose["after"]["quality"])


def test_chain_supersedes_stale_files_and_lists_every_file(chain_run):
    report, out = chain_run["report"], chain_run["out"]
    (early,) = [s for s in report["superseded"] if s["made_by"] == "export"]
    assert early["was"] == "artifacts/model_fp32.onnx" and early["by"] == "prune"
    assert (out / early["path"]).is_file() and "put export after prune" in early["reason"]
    listed = {a["path"] for a in report["artifacts"]} | {f["path"] for f in report["files"]}
    assert {p.relative_to(out).as_posix() for p in (out / "artifacts").iterdir()} == listed
    assert report["removed"] == ["artifacts/model_decomposed_old.onnx"]
    md = (out / "report.md").read_text()
    assert "Superseded" in md and "model_decomposed_old.onnx" in md


def test_chain_keeps_the_pruned_model_sparse(chain_run):
    import onnx
    from onnx import numpy_helper

    report, out = chain_run["report"], chain_run["out"]
    st = {s["name"]: s for s in report["stages"]}
    prune, decompose = st["prune"]["after"], st["decompose"]["after"]
    assert prune["nonzeros"] < prune["params"]
    masks = st["decompose"]["details"]["masks"]
    assert masks["mode"] == "keep" and masks["sparsity"] > 0.1
    assert decompose["nonzeros"] <= prune["nonzeros"] and decompose["nonzeros"] < decompose["params"]
    # The decomposed factors of pruned layers are pruned too: zeros survive into the exported file.
    model = onnx.load(str(out / "artifacts" / "model_fp32.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.dims and len(t.dims) == 4]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros > 0.1
    assert chain_run["result"].model is not None and (
        sum(int((p == 0).sum()) for p in chain_run["result"].model.parameters()) > 0)


def test_chain_summary_and_gates_are_anchored_at_the_loaded_model(chain_run, tmp_path: Path):
    report, out = chain_run["report"], chain_run["out"]
    s = report["summary"]
    base = report["baseline"]["point"]
    assert s["quality_before"] == base["quality"] == report["stages"][1]["metrics"]["accuracy"]
    after = next(a for a in report["artifacts"] if a["path"] == s["artifact"])
    assert s["quality_after"] == after["verification"]["quality"]["value"]
    assert s["quality_drop"] == pytest.approx(100 * (base["quality"] - s["quality_after"]), abs=1e-3)
    # "before" figures come from the loaded model's float artifacts in baseline/, timed beside the final ones.
    assert s["artifact_before"].startswith("baseline/") and s["p50_ms_before"] > 0 and s["size_before_bytes"] > 0
    chain = [report["baseline"]["point"]] + [st["after"] for st in report["stages"] if st.get("after")]
    assert len(chain) == 4 and all(p["quality"] is not None for p in chain)  # loaded, prune, decompose, quantize
    assert (out / "chain.png").stat().st_size > 1000 and "## Chain" in (out / "report.md").read_text()
    # A gate just under the chain's drop fails even though quantize alone lost less than that.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    drop, quant_drop = s["quality_drop"], report["stages"][6]["metrics"]["quality_drop"]
    assert drop > quant_drop + 0.2  # the 2-epoch decomposition lost accuracy before quantize saw the model
    bad = run_cli("report", str(copy), "--fail-on", f"quality_drop>{(drop + quant_drop) / 2}")
    assert bad.returncode == 1 and "summary.quality_drop" in bad.stderr
    assert run_cli("report", str(copy), "--fail-on", f"quality_drop>{drop + 0.5}").returncode == 0


def test_chain_resumes_and_replays_what_it_superseded(chain_run, tmp_path: Path):
    from edgekit import api

    out = tmp_path / "again"
    shutil.copytree(chain_run["out"], out)
    before = json.loads((out / "report.json").read_text())
    api.compress(None, "host", recipe=CHAIN, out=out)
    after = json.loads((out / "report.json").read_text())
    assert [s["seconds"] for s in after["stages"]] == [s["seconds"] for s in before["stages"]]  # all reused
    assert [s["path"] for s in after["superseded"]] == [s["path"] for s in before["superseded"]]
    assert {a["path"] for a in after["artifacts"]} == {a["path"] for a in before["artifacts"]}
    assert after["summary"]["quality_drop"] == before["summary"]["quality_drop"] and after["removed"] == []


def test_auto_plans_from_target_and_data():
    from edgekit import plan
    from edgekit.data import from_arrays
    from edgekit.targets import load_target
    from test_sparsify import tiny_mobilenet

    rng = np.random.default_rng(0)
    labelled = from_arrays(rng.standard_normal((40, 3, 32, 32)), rng.integers(0, 10, 40))
    facts = plan.gather(tiny_mobilenet(), (1, 3, 32, 32), labelled, load_target("rpi4"), 1.0)
    spec, decisions = plan.plan(facts)
    names = [next(iter(s)) for s in spec["stages"]]
    assert names == ["check", "baseline", "prune", "sparsify", "export", "quantize", "verify", "measure"]
    prune = spec["stages"][2]["prune"]
    assert prune["target_rules"] == "on" and prune["max_quality_drop"] == 0.5 and set(facts.prunable) == {"4", "8",
                                                                                                          "10"}
    assert spec["stages"][5]["quantize"]["chain_budget"] is True
    unlabelled = from_arrays(rng.standard_normal((40, 3, 32, 32)))
    facts = plan.gather(tiny_mobilenet(), (1, 3, 32, 32), unlabelled, load_target("rpi4"), 1.0)
    spec, decisions = plan.plan(facts)
    why = {d["name"]: d for d in decisions}
    assert not why["prune"]["used"] and "post-training techniques only" in why["prune"]["why"]
    assert why["quantize"]["used"] and "agreement" in why["quantize"]["why"]
    assert "no labelled data" in plan.describe(decisions, facts)


def test_python_api_takes_a_module_and_arrays(tmp_path: Path):
    import torch

    import edgekit
    from edgekit.data import digits
    from edgekit.zoo import digits_cnn

    torch.manual_seed(1)
    net = digits_cnn().eval()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    ds = digits()
    result = edgekit.compress(net, "host", data=(ds.x_train, ds.y_train), example_input=ds.x_train[:1],
                              recipe="auto", overrides={"joint": {"trials": 3, "final_runs": 20},
                                                        "export": {"formats": ["onnx"]}},
                              out=tmp_path / "api")
    assert isinstance(result.model, torch.nn.Module) and result.model is not net
    assert all(torch.equal(v, original[k]) for k, v in net.state_dict().items())  # the caller's model is untouched
    assert result.report["model"] == "python:Sequential" and result.report["data"]["labelled"]
    assert result.best is not None and result.best.is_file() and result.best in result.artifacts
    assert result["summary"] == result.summary and result.summary["quality_metric"] == "accuracy"
    assert all(p.exists() for p in result.artifacts)
    # export.formats=[onnx]: auto planned its searches for ONNX Runtime only, and said so
    assert {p.suffix for p in result.artifacts} == {".onnx"}
    assert "Formats: onnx (--set export.formats)" in result.report["plan"]["summary"]


def test_python_api_takes_dataloaders(tmp_path: Path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import edgekit
    from edgekit.data import digits

    ds = digits()
    x, y = torch.as_tensor(ds.x_test[:200]), torch.as_tensor(ds.y_test[:200])
    labelled = DataLoader(TensorDataset(x, y), batch_size=32)
    result = edgekit.compress(None, "host", data=labelled, recipe="basic", out=tmp_path / "loader",
                              overrides={"export": {"formats": ["onnx"]}, "measure": {"runs": 20}})
    assert result.report["data"]["labelled"] and "DataLoader" in result.report["data"]["description"]
    assert result.summary["quality_metric"] == "accuracy" and result.summary["quality_drop"] == 0
    bare = DataLoader(x, batch_size=50)
    with pytest.raises(SettingsError, match="needs labelled data"):
        edgekit.compress(None, "host", data=bare, recipe="lottery", out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_verify_never_compares_a_stale_artifact(tmp_path: Path):
    """An artifact made from an older model that reached verify (a bug: it should have been superseded) is an error,
    not a comparison with the wrong model."""
    from types import SimpleNamespace

    from edgekit.data import digits
    from edgekit.errors import VerificationError
    from edgekit.pipeline import RunContext
    from edgekit.report import new_report
    from edgekit.stages import verify
    from edgekit.targets import load_target
    from edgekit.zoo import digits_cnn

    out = tmp_path / "run"
    (out / "artifacts").mkdir(parents=True)
    (out / "artifacts" / "m.onnx").write_bytes(b"never run")
    ctx = RunContext(out=out, target=load_target("host"), bundle=SimpleNamespace(signature=None), data=digits(), threads=1,
                     report={**new_report(), "baseline": {"artifacts": []}})
    ctx.model_version = 0
    ctx.add_artifact(out / "artifacts" / "m.onnx", "onnx", "onnxruntime")
    ctx.model_version = 2
    with pytest.raises(VerificationError, match="made before stage 3 changed the model"):
        verify.run(digits_cnn(), verify.Settings(), ctx)
