"""Quality: one registered metric per task, over ALL outputs of a model, with and without labels.

    metric, why = choose("auto", signature, labels)       # or choose("detect", ...), or a user's metric
    q = metric.score(outputs, labels, reference)          # outputs: one array per model output, rows first
    points = drop(metric, q_before, q_after)              # in the metric's unit (points or dB), > 0 is worse

Every quality figure edgekit reports goes through a `Metric`: the chain, the budget, the INT8 policy search and its
sensitivity pass, the joint search, verify, the gates and report.md. Without labels a metric scores against the
loaded model's outputs (`reference`), and says so (`labelled` False).

Tasks (`--task`, `task=`; module per task, found by name):

    classify        accuracy (labels: class ids) / top-1 agreement with the loaded model; class vectors only
    detect          COCO mAP@0.5 (mAP@0.5:0.95 beside it) of YOLO-style heads (v5 / v8 layouts, NMS), pycocotools
    text-detect     F1 of text regions after thresholding the probability map (DB-style), boxes matched at IoU 0.5
    text-recognize  character accuracy of CTC greedy decoding (labels: strings; the alphabet from the model's
                    metadata or the user)
    segment         mean IoU of the per-pixel class map
    keypoints       normalised mean error (lower is better) of landmarks, normalised by the reference's extent
    embed           cosine similarity with the loaded model's embeddings
    fidelity        SQNR in dB of every output against the loaded model (the worst output counts), capped at 60 dB;
                    the label-free default for any model edgekit cannot name

`auto` picks classify for a model whose only output is a (N, K) class vector (K > 1) and fidelity otherwise, and
says why; it never applies argmax to a tensor that is not a class vector.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgekit.errors import SettingsError

# task -> "module:class"; imported only when the task is used.
TASKS: dict[str, str] = {
    "classify": "edgekit.quality.classify:Classification",
    "detect": "edgekit.quality.detect:Detection",
    "text-detect": "edgekit.quality.text_detect:TextDetection",
    "text-recognize": "edgekit.quality.text_recognize:TextRecognition",
    "segment": "edgekit.quality.segment:Segmentation",
    "keypoints": "edgekit.quality.keypoints:Keypoints",
    "embed": "edgekit.quality.embed:Embedding",
    "fidelity": "edgekit.quality.fidelity:Fidelity",
}
# The budget --recipe auto uses when none is given, per unit: one point of a percentage; for fidelity, a drop from
# 60 dB to 25 dB (the SQNR an INT8 model commonly keeps on its outputs).
DEFAULT_BUDGET = {"pts": 1.0, "dB": 35.0}


@runtime_checkable
class Metric(Protocol):
    """A quality metric over all outputs of a batch of inputs.

    Attributes:
        name: what reports call it ("accuracy", "mAP@0.5", "sqnr_db", the user's own).
        task: the task it measures (one of TASKS, or "user").
        unit: "pts" (a fraction 0..1 whose drops are in percentage points) or "dB" (drops in dB).
        higher_is_better: False for an error (keypoints' NME).
        labelled: whether it scored against labels (False: against the reference outputs).
    """

    name: str
    task: str
    unit: str
    higher_is_better: bool
    labelled: bool

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float: ...

    def per_input(self, outputs: list[np.ndarray], labels: Any,
                  reference: list[np.ndarray] | None) -> np.ndarray | None: ...


@dataclass
class BaseMetric:
    """What the built-in metrics share: labels when given (and the metric takes them), else the reference."""

    name: str = ""
    task: str = ""
    unit: str = "pts"
    higher_is_better: bool = True
    labelled: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def per_input(self, outputs: list[np.ndarray], labels: Any,
                  reference: list[np.ndarray] | None) -> np.ndarray | None:
        return None

    def describe(self) -> str:
        against = "labels" if self.labelled else "the loaded model's outputs (no labels)"
        return f"{self.name} ({self.task}) against {against}"


def drop(metric: Any, before: float | None, after: float | None) -> float | None:
    """How much worse `after` is than `before`, in the metric's unit: percentage points, or dB."""
    if before is None or after is None:
        return None
    diff = (before - after) if getattr(metric, "higher_is_better", True) else (after - before)
    return 100.0 * diff if getattr(metric, "unit", "pts") == "pts" else float(diff)


def drop_se(metric: Any, outputs: list[np.ndarray], base_outputs: list[np.ndarray], labels: Any,
            reference: list[np.ndarray] | None) -> float:
    """Standard error of the drop of `outputs` against `base_outputs` scored on the same inputs, from per-input
    scores (paired): 0 when the metric has none (e.g. mAP, scored over the whole set)."""
    cand = metric.per_input(outputs, labels, reference)
    base = metric.per_input(base_outputs, labels, reference)
    if cand is None or base is None or len(cand) < 2:
        return 0.0
    if getattr(metric, "task", "") == "classify":
        from edgekit.train import paired_drop_se

        return paired_drop_se(base.astype(bool), cand.astype(bool))
    d = np.asarray(base, np.float64) - np.asarray(cand, np.float64)
    se = float(np.std(d, ddof=1) / np.sqrt(len(d)))
    return 100.0 * se if getattr(metric, "unit", "pts") == "pts" else se


def as_outputs(x: Any) -> list[np.ndarray]:
    """Outputs as a list (one array stands for a model with one output)."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def class_vector(shape: tuple[Any, ...]) -> bool:
    """A (N, K) output with a static K > 1: a class vector."""
    return len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1


def infer_task(signature: Any) -> tuple[str, str]:
    """(task, why) from the model's output shapes: classify only where it is unambiguous."""
    outs = list(signature.outputs) if signature is not None else []
    if len(outs) == 1 and class_vector(outs[0].shape):
        return "classify", (f"its one output {outs[0].name} is a class vector {_shape(outs[0].shape)}: "
                            f"classification")
    if not outs:
        return "fidelity", "no output shapes known: output fidelity (SQNR of every output)"
    shapes = ", ".join(f"{o.name} {_shape(o.shape)}" for o in outs)
    return "fidelity", (f"its outputs ({shapes}) are not one class vector: output fidelity (SQNR of every output "
                        f"against the loaded model); pass --task to score a detector, OCR model, segmenter ... by "
                        f"its own metric")


def _shape(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def get(task: str) -> type:
    if task not in TASKS:
        raise SettingsError(f"--task must be auto, {', '.join(TASKS)}; got '{task}'")
    module, _, name = TASKS[task].partition(":")
    return getattr(importlib.import_module(module), name)


def choose(task: str | None, signature: Any, labels: Any = None, options: dict[str, Any] | None = None,
           user: Any = None) -> tuple[Any, str]:
    """(the metric for a run, why it was chosen).

    Args:
        task: "auto" / None (from the output shapes), or one of TASKS.
        signature: the loaded model's signature (its outputs decide `auto`).
        labels: the test labels, or None (the metric then scores against the loaded model's outputs).
        options: task options (an alphabet, thresholds, anchors ...).
        user: a user metric (a callable, or a UserMetric): it wins over the task.
    """
    if user is not None:
        metric = user if isinstance(user, UserMetric) else UserMetric(user)
        return metric, f"the user's metric {metric.name} ({metric.unit}, {'higher' if metric.higher_is_better else 'lower'} is better)"
    why = ""
    if task in (None, "", "auto"):
        task, why = infer_task(signature)
    cls = get(task)
    metric = cls.create(labels=labels, signature=signature, options=dict(options or {}))
    why = why or f"--task {task}"
    return metric, f"{metric.describe()}: {why}"


@dataclass
class UserMetric:
    """The user's own metric: fn(outputs, labels) -> float (outputs: one array per model output, rows first;
    labels: the test labels or None), higher is better unless told otherwise.

    Args:
        fn: the function.
        name: what reports call it (default: the function's name).
        unit: "pts" (it returns a fraction 0..1; drops are in points) or "raw" (drops in its own units).
        higher_is_better: False for an error.
    """

    fn: Callable[[list[np.ndarray], Any], float]
    name: str = ""
    unit: str = "pts"
    higher_is_better: bool = True
    task: str = "user"
    labelled: bool = True

    def __post_init__(self) -> None:
        self.name = self.name or getattr(self.fn, "metric_name", None) or getattr(self.fn, "__name__", "user metric")
        self.unit = getattr(self.fn, "unit", self.unit)
        self.higher_is_better = getattr(self.fn, "higher_is_better", self.higher_is_better)
        if self.unit not in ("pts", "raw", "dB"):
            raise SettingsError(f"metric {self.name}: unit must be pts, raw or dB, got '{self.unit}'")

    def score(self, outputs: list[np.ndarray], labels: Any, reference: list[np.ndarray] | None) -> float:
        value = self.fn(outputs, labels)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"metric {self.name} returned {type(value).__name__}, not a number") from None

    def per_input(self, outputs: list[np.ndarray], labels: Any,
                  reference: list[np.ndarray] | None) -> np.ndarray | None:
        return None

    def describe(self) -> str:
        return f"{self.name} (the user's metric)"


def to_spec(metric: Any) -> dict[str, Any]:
    """A built-in metric as JSON data (what a search's worker processes rebuild it from)."""
    import dataclasses

    if metric.task not in TASKS or not dataclasses.is_dataclass(metric):
        raise SettingsError(f"the metric {metric.name} cannot be handed to worker processes (a Python function "
                            f"given to edgekit.compress): run the search in one process (workers 1)")
    fields = {f.name: getattr(metric, f.name) for f in dataclasses.fields(metric) if f.name != "last"}
    return {"task": metric.task, "fields": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def from_spec(spec: dict[str, Any]) -> Any:
    cls = get(spec["task"])
    fields = dict(spec["fields"])
    if "alphabet" in fields:
        fields["alphabet"] = tuple(fields["alphabet"])
    return cls(**fields)


def load_user_metric(spec: str, trust_code: bool) -> UserMetric:
    """`package.module:function` from --metric: imports user code, so it needs --trust-model-code."""
    from edgekit.untrusted import check_factory

    check_factory(spec, trust_code, what="--metric")
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SettingsError(f"--metric must be package.module:function, got '{spec}'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise SettingsError(f"cannot import metric '{spec}': {e}") from None
    if not callable(fn):
        raise SettingsError(f"metric '{spec}' is not a function")
    return UserMetric(fn)
