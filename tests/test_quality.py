"""Quality metrics (edgekit.quality) on constructed outputs: each metric gives the figure worked out by hand, scores
the loaded model's own outputs as perfect without labels, and scores a damaged copy worse; the choice of metric from
output shapes; the user's metric."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import InputError, SettingsError
from edgekit.quality import DEFAULT_BUDGET, UserMetric, choose, drop, drop_se, infer_task, load_user_metric
from edgekit.signature import Signature, TensorSpec


def _sig(*outputs: tuple, metadata: tuple = ()) -> Signature:
    return Signature((TensorSpec("x", "float32", ("", 3, 32, 32)),),
                     tuple(TensorSpec(f"o{i}", "float32", s) for i, s in enumerate(outputs)), "test", metadata=metadata)


def test_task_is_inferred_only_from_a_class_vector():
    assert infer_task(_sig(("", 10)))[0] == "classify"
    for outputs in ((("", 1, "", ""),), (("", "", 6625),), (("", 84, 8400),), (("", 896, 16), ("", 896, 1)),
                    (("", 1),)):
        task, why = infer_task(_sig(*outputs))
        assert task == "fidelity" and "fidelity" in why, outputs
    metric, why = choose("auto", _sig(("", 1, "", "")))
    assert metric.name == "sqnr_db" and metric.unit == "dB" and "not one class vector" in why
    with pytest.raises(SettingsError, match="--task must be"):
        choose("ocr", _sig(("", 10)))


def test_classification_accuracy_agreement_and_paired_error():
    logits = np.eye(4)[[0, 1, 2, 3, 0, 1]]
    metric, _ = choose("classify", _sig(("", 4)), labels=np.array([0, 1, 2, 3, 1, 1]))
    assert metric.name == "accuracy" and metric.score([logits], np.array([0, 1, 2, 3, 1, 1]), None) == pytest.approx(5 / 6)
    unl, _ = choose("classify", _sig(("", 4)))
    assert unl.name == "agreement" and unl.score([logits], None, [logits]) == 1.0
    flipped = logits[[1, 0, 2, 3, 4, 5]]
    assert unl.score([flipped], None, [logits]) == pytest.approx(4 / 6)
    assert drop(unl, 1.0, 4 / 6) == pytest.approx(100 / 3)
    assert drop_se(unl, [flipped], [logits], None, [logits]) > 0
    with pytest.raises(SettingsError, match="not a class vector"):
        unl.score([np.zeros((6, 1))], None, [np.zeros((6, 1))])


def test_fidelity_sqnr_is_the_worst_output_and_capped():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 100)), rng.standard_normal((8, 5))
    metric, _ = choose("fidelity", _sig(("", 100), ("", 5)))
    assert metric.score([a, b], None, [a, b]) == 60.0  # identical: the cap
    noise = a + 0.1 * np.sqrt(np.mean(a ** 2)) * rng.standard_normal(a.shape)  # noise power 1/100 of the signal
    assert metric.score([noise, b], None, [a, b]) == pytest.approx(20.0, abs=0.5)
    assert metric.score([a, b * 0.0], None, [a, b]) == pytest.approx(0.0, abs=1e-9)  # the worst output counts
    assert drop(metric, 60.0, 20.0) == 40.0 and DEFAULT_BUDGET["dB"] == 35.0
    assert metric.cosine([a, b], [a, b]) == pytest.approx(1.0)


def test_ctc_greedy_decoding_and_character_accuracy():
    alphabet = "".join(["a", "b", "c"])
    sig = _sig(("", "", 5), metadata=(("character", "\n".join(alphabet)),))
    metric, _ = choose("text-recognize", sig, labels=["abc"])
    assert metric.alphabet == ("", "a", "b", "c", " ")
    steps = [1, 1, 0, 2, 2, 0, 0, 3, 3, 3, 0, 2]  # a a _ b b _ _ c c c _ b -> "abcb"
    out = np.eye(5)[steps][None]
    assert metric.decode(out) == [[1, 2, 3, 2]] and metric.text([1, 2, 3, 2]) == "abcb"
    assert metric.score([out], ["abc"], None) == pytest.approx(2 / 3)  # one insertion in three characters
    assert metric.score([out], ["abcb"], None) == 1.0
    unl, _ = choose("text-recognize", _sig(("", "", 5)))  # no labels: no alphabet needed
    assert unl.score([out], None, [out]) == 1.0
    assert unl.score([np.eye(5)[[1, 0, 2]][None]], None, [out]) == pytest.approx(1 - 2 / 4)
    with pytest.raises(SettingsError, match="alphabet"):
        choose("text-recognize", _sig(("", "", 5)), labels=["abc"])


def test_map_of_known_detections():
    metric, _ = choose("detect", _sig(("", 6, 4)), labels=[np.array([[10, 10, 30, 30, 0], [50, 50, 90, 80, 1]])],
                       options={"layout": "yolov8"})
    # yolov8 layout (N, 4 + classes, anchors): anchor 0 finds box 0 exactly, anchor 1 box 1 exactly, anchor 2 is a
    # low-scoring false positive, anchor 3 nothing.
    head = np.zeros((1, 6, 4))
    head[0, :4, 0] = [20, 20, 20, 20]
    head[0, :4, 1] = [70, 65, 40, 30]
    head[0, :4, 2] = [150, 150, 10, 10]
    head[0, 4, 0], head[0, 5, 1], head[0, 4, 2] = 0.9, 0.8, 0.3
    labels = [np.array([[10, 10, 30, 30, 0], [50, 50, 90, 80, 1]])]
    assert metric.score([head], labels, None) == pytest.approx(1.0)
    shifted = head.copy()
    shifted[0, :2, 1] += 20  # box 1 misses (IoU < 0.5): class 1 has AP 0, class 0 AP 1
    assert metric.score([shifted], labels, None) == pytest.approx(0.5)
    assert metric.last["mAP@0.5:0.95"] <= metric.last["mAP@0.5"]
    unl, _ = choose("detect", _sig(("", 6, 4)), options={"layout": "yolov8"})
    assert unl.score([head], None, [head]) == pytest.approx(1.0) and unl.score([shifted], None, [head]) < 1.0


def test_text_region_f1_and_segmentation_and_keypoints_and_embeddings():
    prob = np.zeros((1, 1, 40, 40))
    prob[0, 0, 5:10, 5:30] = 0.9
    prob[0, 0, 20:26, 3:20] = 0.8
    metric, _ = choose("text-detect", _sig(("", 1, "", "")))
    assert len(metric.boxes(prob[0])) == 2
    assert metric.score([prob], None, [prob]) == 1.0
    half = prob.copy()
    half[0, 0, 20:26] = 0.0  # one of two regions lost: precision 1, recall 1/2
    assert metric.score([half], None, [prob]) == pytest.approx(2 / 3)
    seg, _ = choose("segment", _sig(("", 3, 4, 4)), labels=np.zeros((1, 4, 4), np.int64))
    logits = np.zeros((1, 3, 4, 4))
    logits[0, 0] = 1.0
    assert seg.score([logits], np.zeros((1, 4, 4), np.int64), None) == 1.0
    logits[0, 1, :2] = 2.0  # half the pixels class 1: IoU class 0 = 0.5, class 1 = 0
    assert seg.score([logits], np.zeros((1, 4, 4), np.int64), None) == pytest.approx(0.25)
    kp, _ = choose("keypoints", _sig(("", 6)))
    pts = np.array([[0.0, 0.0, 3.0, 4.0, 0.0, 4.0]])  # three points, extent diagonal 5
    assert kp.score([pts], None, [pts]) == 0.0 and not kp.higher_is_better
    assert kp.score([pts + np.array([[0.5, 0, 0.5, 0, 0.5, 0]])], None, [pts]) == pytest.approx(0.1)
    assert drop(kp, 0.0, 0.1) == pytest.approx(10.0)  # an error that grew is a drop
    emb, _ = choose("embed", _sig(("", 4)))
    v = np.array([[1.0, 0, 0, 0]])
    assert emb.score([v], None, [v]) == 1.0 and emb.score([np.array([[1.0, 1.0, 0, 0]])], None, [v]) == pytest.approx(
        np.sqrt(0.5))


def test_user_metric_and_its_trust_flag(tmp_path, monkeypatch):
    def word_accuracy(outputs, labels):
        return float(np.mean(np.asarray(outputs[0]).argmax(1) == labels))

    metric, why = choose("auto", _sig(("", 1, "", "")), user=word_accuracy)
    assert metric.name == "word_accuracy" and "user" in why and metric.score([np.eye(2)], np.array([0, 0]), None) == 0.5
    assert UserMetric(word_accuracy, unit="raw").unit == "raw"
    (tmp_path / "mymetrics.py").write_text("def m(outputs, labels):\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match="--trust-model-code"):
        load_user_metric("mymetrics:m", trust_code=False)
    assert load_user_metric("mymetrics:m", trust_code=True).score([np.zeros(1)], None, None) == 0.5


def test_the_users_metric_drives_a_run_and_needs_the_trust_flag(tmp_path):
    """A metric passed to the API scores the baseline and every artifact and report.json names it; on the command
    line it is imported code, so without --trust-model-code the run stops in one line before anything is written."""
    import edgekit
    from conftest import one_line_error, run_cli

    def top2(outputs, labels):
        best = np.argsort(outputs[0], axis=1)[:, -2:]
        return float(np.mean((best == np.asarray(labels)[:, None]).any(axis=1)))

    report = edgekit.compress(None, "host", recipe="basic", metric=top2, out=tmp_path / "run",
                              overrides={"export": {"formats": ["onnx"]}}).report
    assert report["quality"]["metric"] == "top2" and report["quality"]["task"] == "user"
    (art,) = report["artifacts"]
    scored, summary = art["verification"]["quality"], report["summary"]
    assert scored["metric"] == "top2" and 0.9 < scored["value"] <= 1.0
    assert summary["quality_metric"] == "top2" and summary["quality_before"] == pytest.approx(scored["value"], abs=0.01)

    (tmp_path / "my_metrics.py").write_text("def top2(outputs, labels):\n    return 0.5\n")
    refused = run_cli("compress", "--recipe", "basic", "--metric", "my_metrics:top2", "--out",
                      str(tmp_path / "refused"), env={"PYTHONPATH": str(tmp_path)})
    one_line_error(refused, "--trust-model-code")
    assert not (tmp_path / "refused").exists()
