"""INT8 policy search: policy JSON, the ONNX / TFLite backends honour per-layer choices, search and choice rules."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import InputError, SettingsError
from edgekit.quant.evaluate import Candidate
from edgekit.quant.policy import FLOAT, INT8_CHANNEL, INT8_TENSOR, Layer, Policy
from edgekit.quant.search import seed_policies
from edgekit.search_core import Constraints, choose, pareto_front


@pytest.fixture(scope="module")
def cnn(digits_run):
    """The trained default digits CNN, its float ONNX export (from the shared digits run) and the digits data."""
    from edgekit.data import digits
    from edgekit.zoo import load_model

    bundle = load_model(None, None, None, None)
    return {"model": bundle.module, "onnx": digits_run / "artifacts" / "model_fp32.onnx", "data": digits()}


def test_policy_json_round_trip_and_validation(tmp_path):
    p = Policy(layers={"a": FLOAT, "b": INT8_TENSOR, "c": INT8_CHANNEL}, calibration="entropy",
               symmetric_activations=True, label="x")
    q = Policy.load(p.save(tmp_path / "p.json"))
    assert q == p and q.key() == p.key()
    assert q.float_layers() == ["a"] and sorted(q.quantised()) == ["b", "c"]
    assert q.mode("unlisted") == FLOAT
    with pytest.raises(SettingsError, match="unknown layer modes"):
        Policy(layers={"a": "int4"})
    with pytest.raises(SettingsError, match="calibration"):
        Policy(calibration="magic")
    (tmp_path / "bad.json").write_text('{"layers": {}}')
    with pytest.raises(InputError):
        Policy.load(tmp_path / "bad.json")


def _weight_scales(path: Path) -> dict[str, np.ndarray | None]:
    """Weight name -> its DequantizeLinear scale (None: the weight reaches its layer unquantised)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    deq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    out: dict[str, np.ndarray | None] = {}
    for n in g.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1:
            src = deq.get(n.input[1])
            out[n.name] = None if src is None else inits[src.input[1]]
    return out


def test_onnx_backend_applies_each_layer_choice(cnn, tmp_path):
    from edgekit.quant.onnx_backend import OnnxQuantizer

    q = OnnxQuantizer(cnn["onnx"], cnn["data"].x_train[:32], tmp_path)
    names = [la.name for la in q.layers]
    assert len(names) == 5 and names[-1] == "15"  # 4 convs and the classifier, named by torch module
    modes = {names[0]: FLOAT, names[1]: INT8_TENSOR, names[2]: INT8_CHANNEL, names[3]: INT8_CHANNEL,
             names[4]: INT8_TENSOR}
    out = q.apply(Policy(layers=modes), tmp_path / "mixed.onnx")
    scales = _weight_scales(out)
    for la in q.layers:
        s = scales[la.node]
        if modes[la.name] == FLOAT:
            assert s is None, la.name
        elif modes[la.name] == INT8_TENSOR:
            assert s is not None and s.size == 1, la.name
        else:
            assert s is not None and s.size > 1, la.name  # one scale per output channel
    with pytest.raises(Exception, match="lacks"):
        q.apply(Policy(layers={"no.such.layer": INT8_CHANNEL}), tmp_path / "x.onnx")


def test_calibration_in_priority_order_writes_the_same_file(cnn, tmp_path, monkeypatch):
    """The calibrator's session made lean (priority-based order, no memory pattern: a fraction of the memory on big
    inputs) gives the very file ONNX Runtime's own session gives, for min-max and histogram calibration."""
    from onnxruntime.quantization import calibrate

    from edgekit.quant import onnx_backend
    from edgekit.quant.onnx_backend import OnnxQuantizer

    made = []
    lean = onnx_backend._lean_calibration_session

    def counted() -> contextlib.AbstractContextManager:
        made.append(1)
        return lean()

    own = calibrate.CalibraterBase.create_inference_session
    for cal in ("minmax", "percentile"):
        files = []
        for session, name in ((counted, "lean"), (contextlib.nullcontext, "own")):
            monkeypatch.setattr(onnx_backend, "_lean_calibration_session", session)
            q = OnnxQuantizer(cnn["onnx"], cnn["data"].x_train[:16], tmp_path / f"{name}-{cal}")
            files.append(q.apply(Policy.uniform(q.layers, calibration=cal), tmp_path / f"{name}-{cal}.onnx"))
            assert calibrate.CalibraterBase.create_inference_session is own  # put back after each use
        assert files[0].read_bytes() == files[1].read_bytes(), cal
    assert len(made) == 2


def test_tflite_backend_keeps_float_layers_float(cnn, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.quant.tflite_backend import TFLiteQuantizer

    q = TFLiteQuantizer(cnn["model"], cnn["data"].x_test[:1], cnn["data"].x_train[:16])
    names = [la.name for la in q.layers]
    # One conversion (each costs seconds): the classifier float, every conv INT8.
    mixed = q.apply(Policy(layers={**Policy.uniform(names).layers, names[-1]: FLOAT}, calibration="minmax"),
                    tmp_path / "mixed.tflite")
    it = Interpreter(model_path=str(mixed))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()

    def weight_dtypes(op_names: tuple[str, ...]) -> set[str]:
        return {str(tensors[o["inputs"][1]]["dtype"]) for o in ops if o["op_name"] in op_names}

    assert weight_dtypes(("FULLY_CONNECTED",)) == {"<class 'numpy.float32'>"}
    assert weight_dtypes(("CONV_2D", "DEPTHWISE_CONV_2D")) == {"<class 'numpy.int8'>"}


def _cand(drop: float, p50: float | None, size: int, label: str) -> Candidate:
    return Candidate(policy=Policy(label=label), path=Path(label), quality=1 - drop / 100, drop=drop, sqnr_db=30.0,
                     agreement=1.0, size_bytes=size, p50_ms=p50, latency_source="measured" if p50 else "none")


def test_choice_prefers_lowest_drop_near_the_fastest_feasible():
    a = _cand(5.0, 1.00, 100, "fast-lossy")
    b = _cand(1.0, 1.05, 100, "near-fast")
    c = _cand(0.0, 2.00, 300, "slow-lossless")
    chosen, why, met = choose([a, b, c], Constraints(max_quality_drop=10), latency_slack=0.10)
    assert chosen is b and met and "lowest quality drop" in why
    chosen, _, met = choose([a, b, c], Constraints(max_quality_drop=0.5))
    assert chosen is c and met  # the only feasible one
    chosen, why, met = choose([a, b], Constraints(max_quality_drop=0.5))
    assert not met and chosen is b and "no candidate meets" in why
    front = pareto_front([a, b, c, _cand(6.0, 1.5, 400, "dominated")])
    assert {x.policy.label for x in front} == {"fast-lossy", "near-fast", "slow-lossless"}
    # Without latency the choice falls back to size and says so.
    chosen, why, _ = choose([_cand(2.0, None, 100, "s"), _cand(0.0, None, 105, "t")], Constraints(5.0))
    assert chosen.policy.label == "t" and "latency unavailable" in why


def test_confidence_margin_applies_to_the_int8_search():
    """The INT8 policy search's constraint takes the same margin as the joint search's: a fast policy whose drop is
    within the budget only by luck (large standard error) is not feasible with confidence 1; the margin travels
    to worker processes with the constraints."""
    from dataclasses import asdict

    lucky, steady = _cand(0.5, 1.0, 100, "lucky"), _cand(0.5, 1.2, 100, "steady")
    lucky.drop_se, steady.drop_se = 1.8, 0.3
    assert choose([lucky, steady], Constraints(1.0))[0] is lucky
    chosen, why, met = choose([lucky, steady], Constraints(1.0, confidence=1.0))
    assert chosen is steady and met and "0.50 ± 0.30" in why
    assert Constraints(**asdict(Constraints(1.0, confidence=1.0))).confidence == 1.0
    from edgekit.quant.settings import Settings as QuantizeSettings

    with pytest.raises(SettingsError, match="confidence"):
        QuantizeSettings(confidence=-0.5)


def test_a_worker_trial_keeps_its_drop_standard_error():
    """A shared search's main process chooses among candidates rebuilt from trials that other workers scored: the
    margin needs their standard error too (a study written before the margin existed reads as 0)."""
    import json
    from types import SimpleNamespace

    from edgekit.quant.search import candidate_attrs, candidate_from_trial

    layers = [Layer("l0", "Conv", 10)]
    c = _cand(0.5, 1.0, 100, "w")
    c.drop_se = 1.8
    attrs = json.loads(json.dumps(candidate_attrs(c)))  # what the storage holds
    trial = SimpleNamespace(number=7, params={"l0": INT8_CHANNEL, "calibration": "minmax", "symmetric": False},
                            user_attrs={"candidate": attrs, "label": "w"})
    back = candidate_from_trial(trial, layers)
    assert back.drop_se == 1.8 and not Constraints(1.0, confidence=1.0).met(back)
    del trial.user_attrs["candidate"]["drop_se"]
    assert candidate_from_trial(trial, layers).drop_se == 0.0


def test_seed_policies_keep_most_sensitive_layers_float():
    layers = [Layer(f"l{i}", "Conv", 10) for i in range(6)]
    seeds = seed_policies(layers, ["l3", "l0", "l5", "l1", "l2", "l4"], "minmax", max_seeds=10)
    assert seeds[0].quantised() == [la.name for la in layers]
    top1 = next(s for s in seeds if s.label.startswith("top-1 "))
    assert top1.float_layers() == ["l3"]
    top2 = next(s for s in seeds if s.label.startswith("top-2 "))
    assert sorted(top2.float_layers()) == ["l0", "l3"]


def test_search_without_latency_never_reports_host_timings(cnn, tmp_path):
    """A non-host target without a profile: candidates carry no latency at all."""
    from edgekit.quant.driver import search_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.onnx_backend import CALIBRATIONS, OnnxQuantizer

    ds = cnn["data"]
    q = OnnxQuantizer(cnn["onnx"], ds.x_train[:32], tmp_path)
    scorer = Scorer(q, "onnxruntime", cnn["onnx"], ds.x_test[:120], ds.y_test[:120], tmp_path, latency="none")
    r = search_runtime(scorer, fmt="onnx", backend_name="onnxruntime", calibrations=CALIBRATIONS, trials=6,
                       constraints=Constraints(max_quality_drop=5.0))
    assert all(c.p50_ms is None and c.latency_source == "none" for c in r.candidates)
    assert r.timings == {} and "latency unavailable" in r.reason
    assert len(r.sensitivity) == 5 and r.evaluated >= 6
    assert r.chosen.drop <= 5.0


def test_sensitivity_pass_stops_at_its_deadline_and_ranks_the_rest_after(cnn, tmp_path):
    """A time limit bounds the per-layer pass (each PT2E candidate is a whole export); the layers it did not reach
    are still searched, ranked after the measured ones, and the report says so."""
    import time

    from edgekit.quant.driver import search_runtime
    from edgekit.quant.evaluate import Scorer
    from edgekit.quant.onnx_backend import CALIBRATIONS, OnnxQuantizer
    from edgekit.quant.report import markdown
    from edgekit.quant.sensitivity import layer_sensitivity

    ds = cnn["data"]
    q = OnnxQuantizer(cnn["onnx"], ds.x_train[:32], tmp_path)
    scorer = Scorer(q, "onnxruntime", cnn["onnx"], ds.x_test[:120], ds.y_test[:120], tmp_path, latency="none")
    assert len(layer_sensitivity(scorer, "minmax", deadline=time.perf_counter())) == 1  # one layer, then stop
    r = search_runtime(scorer, fmt="onnx", backend_name="onnxruntime", calibrations=CALIBRATIONS, trials=4,
                       constraints=Constraints(max_quality_drop=5.0), max_seconds=1e-6)
    assert len(r.sensitivity) == 1 < len(r.int8.policy.layers) == 5
    assert "measured for the first 1 of 5 layers" in markdown(r, None)


def test_latency_is_measured_only_for_the_host_target():
    from edgekit.quant.run import latency_mode
    from edgekit.targets import load_target

    assert latency_mode(load_target("host"), None) == ("measured", None, None)
    mode, predictor, device = latency_mode(load_target("rpi4"), None)
    assert mode in ("predicted", "none") and (predictor is None) == (mode == "none") and device is None
    # The browser target's engines are not started per candidate: without --device the search does not measure.
    assert latency_mode(load_target("wasm"), None)[0] in ("predicted", "none")
    mode, _, device = latency_mode(load_target("host"), "ssh://me@127.0.0.1")
    assert mode == "measured" and device.uri == "ssh://me@127.0.0.1:22"  # candidates timed on that device


def test_gates_read_the_baseline_anchored_summary_and_fail_on_missing_or_unmeasured_values():
    from edgekit.gates import check_gates
    from edgekit.report import summarize

    def art(path, precision, size, quality, latency=None):
        return {"path": path, "precision": precision, "size_bytes": size, "runtime": "onnxruntime",
                "model_version": 1, "latency": latency or {"source": "none"},
                "verification": {"passed": True, "quality": {"metric": "accuracy", "value": quality, "inputs": 100}}}

    # Loaded model 0.95; a prune stage lost one point (0.94); INT8 loses another (0.93). The summary is anchored at
    # the loaded model: 2 points, not the 1 point quantize sees from its own input.
    report = {"schema": 2, "data": {"quality_metric": "accuracy"},
              "baseline": {"point": {"quality": 0.95, "weights_bytes": 400}, "artifacts": [
                  {"path": "baseline/a", "precision": "fp32", "size_bytes": 400, "latency": {"source": "none"}}]},
              "stages": [{"name": "prune", "index": 1, "changes": ["weights", "masks"], "after": {"quality": 0.94}},
                         {"name": "quantize", "index": 2, "changes": ["artifacts"],
                          "metrics": {"quality_before": 0.94, "quality_after": 0.93, "quality_drop": 1.0}}],
              "artifacts": [art("a", "fp32", 400, 0.94), art("b", "int8", 100, 0.93)]}
    report["summary"] = summarize(report)
    s = report["summary"]
    assert s["quality_before"] == 0.95 and s["quality_after"] == 0.93 and s["quality_drop"] == pytest.approx(2.0)
    assert s["size_before_bytes"] == 400 and s["size_after_bytes"] == 100 and s["p50_ms"] is None
    assert check_gates(report, ["quality_drop>2.5", "size_after_bytes>200"]) == []
    assert check_gates(report, ["quality_drop>1.0"]) == ["quality_drop>1.0: summary.quality_drop = 2.0"]
    assert "no value" in check_gates(report, ["p50_ms>20"])[0]  # unmeasured latency must not pass a gate
    report["artifacts"][1]["latency"] = {"source": "measured", "p50_ms": 3.0}
    report["summary"] = summarize(report)
    assert report["summary"]["p50_ms"] == 3.0 and check_gates(report, ["p50_ms>20"]) == []
    # A budget picks the fastest artifact within it: INT8 (2 points) is out of a 1.5-point budget, fp32 is in.
    report["budget"] = {"max_quality_drop": 1.5}
    report["artifacts"][0]["latency"] = {"source": "measured", "p50_ms": 5.0}
    s = summarize(report)
    assert s["artifact"] == "a" and s["quality_drop"] == pytest.approx(1.0) and s["budget_met"] is True
    assert s["quality_drop_max"] == pytest.approx(2.0)
