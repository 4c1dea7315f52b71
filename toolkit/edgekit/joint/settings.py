"""Settings of the joint pruning + quantisation search (the `joint` stage and `edgekit search` take the same)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.errors import SettingsError

DIMENSIONS = ("width", "precision", "sparsity")
RUNTIMES = {"onnxruntime": "onnx", "litert": "tflite"}  # runtimes whose artifacts the search can build


@dataclass(frozen=True)
class Settings:
    dimensions: tuple[str, ...] = field(default=(), metadata={
        "help": "what the search decides per layer: width, precision, sparsity; empty: width and precision, plus "
                "sparsity where the target's runtime runs sparse weights"})
    widths: tuple[float, ...] = field(default=(1.0, 0.75, 0.5, 0.375, 0.25), metadata={
        "help": "kept-channel fractions a channel group may get (rounded to the target's channel multiple)"})
    sparsities: tuple[float, ...] = field(default=(0.0, 0.75, 0.9), metadata={
        "help": "unstructured sparsity a layer may get (only layers the target's runtime runs sparse)"})
    runtimes: tuple[str, ...] = field(default=(), metadata={
        "help": "runtimes to search in (onnxruntime, litert); empty: the target's"})
    trials: int = field(default=48, metadata={"help": "Optuna trials (NSGA-II)"})
    max_seconds: float = field(default=1080.0, metadata={"help": "time limit of the search (the final timing and "
                                                                 "fine-tune come on top)"})
    max_quality_drop: float = field(default=1.0, metadata={"help": "constraint: quality drop in points"})
    confidence: float = field(default=0.0, metadata={
        "help": "a candidate meets max_quality_drop when its drop plus this many standard errors (paired, over the "
                "scoring inputs) does: on a few hundred inputs a thinner model's measured drop is noise of 1-2 "
                "points, and the fastest candidate that looks feasible is the one most likely to be lucky (0: the "
                "measured drop alone)"})
    latency_budget_ms: float = field(default=0.0, metadata={"help": "constraint: p50 latency in ms (0: none)"})
    max_size_mb: float = field(default=0.0, metadata={"help": "constraint: artifact size in MB (0: none)"})
    latency_slack: float = field(default=0.05, metadata={"help": "choose the lowest drop within this fraction of "
                                                                 "the fastest feasible latency"})
    finetune_epochs: int = field(default=2, metadata={"help": "fine-tuning epochs of each pruned candidate"})
    finetune_steps: int = field(default=0, metadata={
        "help": "at least this many optimiser steps of fine-tuning per pruned candidate: on small data, more epochs "
                "than finetune_epochs (0: exactly finetune_epochs)"})
    final_epochs: int = field(default=0, metadata={"help": "extra fine-tuning epochs of the chosen candidate"})
    lr: float = field(default=5e-4, metadata={"help": "fine-tuning learning rate (Adam)"})
    distill: float = field(default=0.0, metadata={
        "help": "weight of distillation from the unmodified model (KL to its class probabilities) in the "
                "fine-tuning loss; the rest is the label loss (0: labels only)"})
    batch_size: int = field(default=64, metadata={"help": "fine-tuning batch size"})
    train_inputs: int = field(default=0, metadata={"help": "training inputs per fine-tuning epoch (0: all)"})
    calibration_inputs: int = field(default=64, metadata={"help": "INT8 calibration inputs (train split)"})
    eval_inputs: int = field(default=512, metadata={"help": "held-out inputs that score each candidate"})
    timing_runs: int = field(default=30, metadata={"help": "rounds timing a candidate against the anchor"})
    final_runs: int = field(default=200, metadata={"help": "interleaved rounds of the final timing"})
    screen: bool = field(default=True, metadata={
        "help": "screen each candidate's latency first (the target's latency predictor, else a short timing) and "
                "fine-tune and measure only candidates that can reach the front"})
    channel_multiple: int = field(default=0, metadata={"help": "kept channels are multiples of this (0: the "
                                                               "target's channel_multiple)"})
    seed: int = field(default=0, metadata={"help": "sampler, fine-tuning and data-order seed"})

    def __post_init__(self) -> None:
        bad = [d for d in self.dimensions if d not in DIMENSIONS]
        if bad:
            raise SettingsError(f"joint: unknown dimensions {bad}; choose from {list(DIMENSIONS)}")
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad:
            raise SettingsError(f"joint: cannot search in runtimes {bad}; available: {list(RUNTIMES)}")
        if not self.widths or any(not 0 < w <= 1 for w in self.widths):
            raise SettingsError(f"joint: widths must be fractions in (0, 1], got {list(self.widths)}")
        if any(not 0 <= s < 1 for s in self.sparsities):
            raise SettingsError(f"joint: sparsities must be in [0, 1), got {list(self.sparsities)}")
        if self.trials < 1 or self.max_seconds <= 0:
            raise SettingsError("joint: trials must be >= 1 and max_seconds > 0")
        if self.max_quality_drop < 0 or self.latency_budget_ms < 0 or self.max_size_mb < 0 or self.confidence < 0:
            raise SettingsError("joint: constraints and confidence must be >= 0 (0 disables latency and size limits)")
        if not 0 <= self.latency_slack < 1:
            raise SettingsError(f"joint: latency_slack must be in [0, 1), got {self.latency_slack}")
        ints = {"finetune_epochs": 0, "finetune_steps": 0, "final_epochs": 0, "batch_size": 1, "train_inputs": 0,
                "calibration_inputs": 1, "eval_inputs": 8, "timing_runs": 5, "final_runs": 20, "channel_multiple": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise SettingsError(f"joint: {name} must be an integer >= {low}, got {v!r}")
        if not 0 <= self.distill <= 1:
            raise SettingsError(f"joint: distill must be in [0, 1], got {self.distill}")
        if self.lr <= 0:
            raise SettingsError(f"joint: lr must be positive, got {self.lr}")
