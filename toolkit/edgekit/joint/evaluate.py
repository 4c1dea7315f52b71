"""Scores a decision: quality in the artifact's own runtime, size, and latency measured against one anchor.

Latency (host target): every candidate is timed back to back with the anchor, the unmodified model's fastest FP32
artifact over the searched runtimes, in alternating order; its p50 is the anchor's p50 times the median per-round
ratio, so that the slow phases of a shared machine cancel, and 1 / ratio is the speedup the issue asks about.
Another target: predicted from the target's profile (ONNX Runtime artifacts) or unavailable; host timings are never
reported as another device's.

Screening: a candidate that needs fine-tuning is first built with its untrained weights (latency does not depend on
weight values) and its latency estimated: by the target's latency predictor where it covers the runtime (scaled by
the predicted and measured latency of the unmodified model), else by a short timing. Only a candidate that can come
within the choice's slack of the fastest feasible candidate found so far is fine-tuned, scored and measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.devices.timing import paired_timing, time_interleaved
from edgekit.errors import EdgekitError
from edgekit.joint.build import Builder
from edgekit.joint.space import Decision
from edgekit.runtimes import load_runner, run_all
from edgekit.train import top1_agreement

QUICK_MARGIN = 0.15  # a short timing's own spread on a shared machine
PREDICTOR_TOLERANCE = 0.25


@dataclass
class JointCandidate:
    """One evaluated (or screened-out) decision."""

    decision: Decision
    path: Path | None = None
    quality: float | None = None
    drop: float | None = None
    drop_se: float = 0.0  # standard error of `drop` (points, paired against the unmodified model)
    agreement: float | None = None
    size_bytes: int = 0
    params: int = 0
    p50_ms: float | None = None
    latency_source: str = "none"
    screen_ms: float | None = None
    screen_source: str = ""
    status: str = "evaluated"  # or "screened out"
    trial: int = -1
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    @property
    def label(self) -> str:
        return self.decision.label

    def as_dict(self) -> dict[str, Any]:
        r = lambda v, n: None if v is None else round(v, n)  # noqa: E731
        return {"label": self.label, "runtime": self.decision.runtime, "status": self.status,
                "quality": r(self.quality, 5), "drop": r(self.drop, 3), "drop_se": r(self.drop_se, 3),
                "agreement": r(self.agreement, 5),
                "size_bytes": self.size_bytes, "params": self.params, "p50_ms": r(self.p50_ms, 4),
                "latency_source": self.latency_source, "screen_ms": r(self.screen_ms, 4),
                "screen_source": self.screen_source, "trial": self.trial, "seconds": round(self.seconds, 2),
                "decision": self.decision.as_dict(), **self.extra}


class Evaluator:
    """Evaluates decisions for one model; baselines and the anchor are set by `baseline()`.

    Args:
        builder: makes models and artifacts.
        runtimes: the searched runtimes.
        x_eval, y_eval: held-out inputs and labels (None: agreement with the unmodified model).
        latency: "measured", "predicted" or "none".
        predictor: the target's latency predictor (or None).
    """

    def __init__(self, builder: Builder, runtimes: list[str], x_eval: np.ndarray, y_eval: np.ndarray | None,
                 settings: Any, threads: int = 1, latency: str = "measured", predictor: Any = None,
                 metric: Any = None) -> None:
        from edgekit.quality import choose

        self.b, self.runtimes, self.s, self.threads = builder, runtimes, settings, threads
        self.x, self.y = x_eval.astype(np.float32), y_eval
        # the joint search fine-tunes on class labels: its metric is classification's (accuracy / agreement)
        self.metric = metric if metric is not None else choose("classify", None, y_eval)[0]
        self.latency, self.predictor = latency, predictor
        self.dense: dict[str, JointCandidate] = {}
        self.ref_logits: dict[str, np.ndarray] = {}
        self.anchor: Any = None
        self.anchor_runtime = ""
        self.anchor_p50: float | None = None
        self._pred_dense: dict[str, float] = {}
        self._cache: dict[str, JointCandidate] = {}
        self.measured = 0
        self.screened_out = 0
        self.predictor_note = ""

    def _quality(self, rt: str, logits: np.ndarray) -> tuple[float, float]:
        ref = self.ref_logits[rt]
        labels = self.y[: len(logits)] if self.y is not None and self.metric.labelled else None
        return self.metric.score([logits], labels, [ref]), top1_agreement(logits, ref)

    def _score(self, cand: JointCandidate, runner: Any) -> None:
        from edgekit.quality import drop, drop_se

        rt = cand.decision.runtime
        logits = run_all(runner, self.x)
        cand.quality, cand.agreement = self._quality(rt, logits)
        cand.drop = drop(self.metric, self.dense[rt].quality, cand.quality)
        labels = self.y[: len(logits)] if self.y is not None and self.metric.labelled else None
        cand.drop_se = drop_se(self.metric, [logits], [self.ref_logits[rt]], labels, [self.ref_logits[rt]])

    def baseline(self, runs: int) -> dict[str, JointCandidate]:
        """Exports the unmodified model for every runtime, scores it, times all interleaved, picks the anchor."""
        runners = {}
        for rt in self.runtimes:
            d = Decision(rt, label=f"unmodified ({rt})")
            path = self.b.artifact(self.b.base, d, f"dense-{rt}")
            runners[rt] = load_runner(rt, path, self.threads)
            self.ref_logits[rt] = run_all(runners[rt], self.x)
            q, agree = self._quality(rt, self.ref_logits[rt])
            self.dense[rt] = JointCandidate(d, path, q, 0.0, agree, path.stat().st_size, _params(self.b.base))
            self._cache[d.key()] = self.dense[rt]
        if self.latency == "measured":
            x = self.x[:1]
            timings = time_interleaved(list(runners.values()), x, 5, runs)
            for rt, t in zip(runners, timings, strict=True):
                self.dense[rt].p50_ms, self.dense[rt].latency_source = t.p50_ms, "measured"
                self.dense[rt].extra["timing"] = t.as_dict()
            self.anchor_runtime = min(self.dense, key=lambda r: self.dense[r].p50_ms)
            self.anchor, self.anchor_p50 = runners[self.anchor_runtime], self.dense[self.anchor_runtime].p50_ms
        else:
            for c in self.dense.values():
                self._predict(c)
        return self.dense

    def evaluate(self, d: Decision, name: str, limit_ms: float | None = None) -> JointCandidate:
        """Scores `d`; with `limit_ms`, a candidate that needs fine-tuning is screened first and left out (status
        "screened out") when its estimated latency exceeds the limit."""
        key = d.key()
        if key in self._cache:
            return self._cache[key]
        start = time.perf_counter()
        cand = JointCandidate(d)
        needs_training = bool(d.widths or d.sparsity)
        if needs_training and limit_ms is not None and self.s.screen and self.latency != "none":
            self._screen(cand, name)
            if cand.screen_ms is not None and cand.screen_ms > limit_ms * (1 + cand.extra["screen_margin"]):
                cand.status, cand.seconds = "screened out", time.perf_counter() - start
                self.screened_out += 1
                self._cache[key] = cand
                return cand
        model = self.b.tuned(d)
        cand.path = self.b.artifact(model, d, name)
        cand.params = _params(model)
        runner = load_runner(d.runtime, cand.path, self.threads)
        self._score(cand, runner)
        cand.size_bytes = cand.path.stat().st_size
        if self.latency == "measured":
            self._measure(cand, runner)
        else:
            self._predict(cand)
        cand.seconds = time.perf_counter() - start
        self._cache[key] = cand
        return cand

    def rescore(self, cand: JointCandidate, model: Any, name: str) -> JointCandidate:
        """The same decision with another model (e.g. fine-tuned longer): a new artifact, scored and measured."""
        new = JointCandidate(cand.decision, trial=cand.trial)
        new.path = self.b.artifact(model, cand.decision, name)
        new.params = _params(model)
        runner = load_runner(cand.decision.runtime, new.path, self.threads)
        self._score(new, runner)
        new.size_bytes = new.path.stat().st_size
        self._measure(new, runner) if self.latency == "measured" else self._predict(new)
        return new

    def _measure(self, cand: JointCandidate, runner: Any, runs: int | None = None) -> None:
        raw, ratio = paired_timing(runner, self.anchor, self.x[:1], runs or self.s.timing_runs)
        cand.p50_ms, cand.latency_source = self.anchor_p50 * ratio, "measured"
        cand.extra.update(p50_raw_ms=round(raw, 4), ratio_to_anchor=round(ratio, 4))
        self.measured += 1

    def _predict(self, cand: JointCandidate) -> None:
        if self.predictor is None or cand.path is None:
            return
        try:
            pred = self.predictor.predict(cand.path, cand.decision.runtime, self.threads)
        except EdgekitError as e:  # the profile cannot cover this artifact: no figure rather than a guess
            cand.extra["latency_reason"] = str(e)
            return
        cand.p50_ms, cand.latency_source = float(pred["p50_ms"]), "predicted"
        cand.extra["predicted_error_pct"] = pred.get("error_pct")

    def _screen(self, cand: JointCandidate, name: str) -> None:
        """Estimated latency of the candidate's architecture and precision (untrained weights)."""
        d = cand.decision
        path = self.b.artifact(self.b.structural(d), d, f"{name}-screen")
        est, margin, source = self._predicted_ratio(d.runtime, path)
        if est is None and self.latency == "measured":
            runner = load_runner(d.runtime, path, self.threads)
            _, ratio = paired_timing(runner, self.anchor, self.x[:1], max(5, self.s.timing_runs // 4), warmup=2)
            est, margin, source = self.anchor_p50 * ratio, QUICK_MARGIN, "short timing"
        cand.screen_ms, cand.screen_source = est, source
        cand.extra["screen_margin"] = margin
        path.unlink(missing_ok=True)

    def predictor_ok(self, rt: str) -> bool:
        """Whether the predictor covers this model in `rt`: where the unmodified model was measured, its prediction
        must be within PREDICTOR_TOLERANCE of the measurement (a profile of larger models has a fixed term that
        swamps a small model's differences)."""
        if self.predictor is None or rt != "onnxruntime":
            return False
        if rt not in self._pred_dense:
            try:
                self._pred_dense[rt] = float(self.predictor.predict(self.dense[rt].path, rt, self.threads)["p50_ms"])
            except EdgekitError as e:
                self.predictor_note = f"the latency predictor cannot cover this model ({e})"
                self._pred_dense[rt] = math.nan
            measured = self.dense[rt].p50_ms
            if measured is not None and not abs(self._pred_dense[rt] / measured - 1) <= PREDICTOR_TOLERANCE:
                self.predictor_note = (f"the latency predictor is out of its domain for this model (it predicts "
                                       f"{self._pred_dense[rt]:.4f} ms for the unmodified model, measured "
                                       f"{measured:.4f} ms): screening uses short timings")
                self._pred_dense[rt] = math.nan
        return not math.isnan(self._pred_dense[rt])

    def _predicted_ratio(self, rt: str, path: Path) -> tuple[float | None, float, str]:
        """Predictor estimate scaled to this session: measured dense p50 x predicted(candidate) / predicted(dense)."""
        if not self.predictor_ok(rt):
            return None, 0.0, ""
        try:
            pred = self.predictor.predict(path, rt, self.threads)
        except EdgekitError:
            return None, 0.0, ""
        base = self.dense[rt].p50_ms if self.dense[rt].p50_ms is not None else self._pred_dense[rt]
        err = float(pred.get("error_pct") or 10.0) / 100
        return base * float(pred["p50_ms"]) / max(self._pred_dense[rt], 1e-9), err, "latency predictor"


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
