"""The INT8 policy search's settings (the quantize stage's `--set quantize.FIELD=...`), its backends per format and
the runtimes that time them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import SettingsError

BACKENDS = {"onnx": ("onnxruntime", "nncf"), "tflite": ("litert-pt2e", "ai-edge-quantizer"), "pte": ("xnnpack-pt2e",)}
TFLITE_BACKENDS = ("auto", *BACKENDS["tflite"])
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert", "pte": "executorch"}
# Backends that quantise the torch model (the others take the float file, so they run on the native routes).
TORCH_BACKENDS = {"litert-pt2e"}


@dataclass(frozen=True)
class Settings:
    formats: tuple[str, ...] = field(default=(), metadata={"help": "formats to quantise (onnx, tflite, pte); empty: "
                                                                   "the target's formats that have a backend"})
    onnx_backend: str = field(default="onnxruntime", metadata={"help": "onnxruntime (QDQ) or nncf (PTQ)"})
    tflite_backend: str = field(default="auto", metadata={
        "help": "litert-pt2e (quantises the torch model), ai-edge-quantizer (the LiteRT Quantizer on the float "
                ".tflite file), or auto: litert-pt2e with a torch model, ai-edge-quantizer without one"})
    trials: int = field(default=30, metadata={"help": "NSGA-II trials of the ONNX search"})
    tflite_trials: int = field(default=0, metadata={"help": "NSGA-II trials in LiteRT; 0: apply the policy chosen "
                                                            "by the ONNX search (each PT2E candidate is a conversion), "
                                                            "or `trials` with the LiteRT Quantizer"})
    pte_trials: int = field(default=0, metadata={"help": "NSGA-II trials timed in ExecuTorch; 0: apply the policy chosen "
                                                         "by the ONNX search (each candidate is a PT2E export)"})
    max_quality_drop: float = field(default=1.0, metadata={"help": "constraint: quality drop in points (from the "
                                                                   "float model it quantises)"})
    chain_budget: bool = field(default=False, metadata={
        "help": "take the run's quality budget (--max-quality-drop, counted from the model as loaded) minus what "
                "earlier stages spent, when it is tighter than max_quality_drop"})
    confidence: float = field(default=0.0, metadata={
        "help": "a policy meets the quality constraint when its drop plus this many paired standard errors (over "
                "the scoring inputs) does (0: the measured drop alone)"})
    latency_budget_ms: float = field(default=0.0, metadata={"help": "constraint: p50 latency in ms (0: none)"})
    max_size_mb: float = field(default=0.0, metadata={"help": "constraint: artifact size in MB (0: none)"})
    latency_slack: float = field(default=0.10, metadata={"help": "choose the lowest drop within this fraction "
                                                                  "of the fastest feasible latency"})
    calibration_inputs: int = field(default=64, metadata={"help": "calibration inputs (from the train split)"})
    eval_inputs: int = field(default=512, metadata={"help": "held-out inputs that score each candidate"})
    data_mb: float = field(default=256.0, metadata={
        "help": "memory the search's inputs may take, in MB: big inputs (a 736x992 page) are scored and calibrated "
                "on fewer of them (at least 8 and 4), whatever calibration_inputs and eval_inputs say"})
    timing_runs: int = field(default=20, metadata={"help": "interleaved timing rounds per candidate"})
    final_runs: int = field(default=100, metadata={"help": "interleaved rounds timing float / INT8 / chosen"})
    max_seconds: float = field(default=540.0, metadata={"help": "time limit of one search"})
    total_seconds: float = field(default=0.0, metadata={
        "help": "time budget of the whole stage: a format whose search would start after it is skipped, a later "
                "format's search still running at it (at least 60 s) is stopped, and the report says so (0: none); "
                "searches are ordered ONNX, TFLite, ExecuTorch"})
    nncf_baseline: bool = field(default=False, metadata={"help": "also score NNCF's default INT8 (ONNX)"})
    seed: int = field(default=0, metadata={"help": "sampler seed"})
    workers: int = field(default=1, metadata={"help": "processes working on the ONNX search's shared study (this "
                                                      "one included; more join with `edgekit worker`)"})
    storage: str = field(default="", metadata={"help": "the study's storage: sqlite:///PATH, postgresql://USER@HOST"
                                                       "[:PORT]/DB (several machines) or memory; default: "
                                                       "state/quant_study.db in the run folder"})
    skip_failing_formats: bool = field(default=True, metadata={
        "help": "a format whose INT8 conversion fails is reported and skipped instead of stopping the run"})

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in BACKENDS]
        if bad:
            raise SettingsError(f"quantize: no INT8 backend for formats {bad}; available: {sorted(BACKENDS)}")
        if self.onnx_backend not in BACKENDS["onnx"]:
            raise SettingsError(f"quantize: onnx_backend must be one of {BACKENDS['onnx']}, got {self.onnx_backend}")
        if self.tflite_backend not in TFLITE_BACKENDS:
            raise SettingsError(f"quantize: tflite_backend must be one of {TFLITE_BACKENDS}, got "
                                f"{self.tflite_backend}")
        if self.trials < 1 or self.tflite_trials < 0 or self.pte_trials < 0:
            raise SettingsError("quantize: trials must be >= 1, tflite_trials and pte_trials >= 0")
        if self.total_seconds < 0:
            raise SettingsError(f"quantize: total_seconds must be >= 0, got {self.total_seconds}")
        if self.max_quality_drop < 0 or self.latency_budget_ms < 0 or self.max_size_mb < 0 or self.confidence < 0:
            raise SettingsError("quantize: constraints and confidence must be >= 0 (0 disables latency and size "
                                "limits)")
        if not 0 <= self.latency_slack < 1:
            raise SettingsError(f"quantize: latency_slack must be in [0, 1), got {self.latency_slack}")
        if self.calibration_inputs < 1 or self.eval_inputs < 8 or self.timing_runs < 5 or self.final_runs < 20:
            raise SettingsError("quantize: need calibration_inputs >= 1, eval_inputs >= 8, timing_runs >= 5, "
                                "final_runs >= 20")
        if not 1 <= self.workers <= 64:
            raise SettingsError(f"quantize: workers must be from 1 to 64, got {self.workers}")
        if self.storage:
            from pathlib import Path

            from edgekit.study import storage_url

            storage_url(self.storage, Path("."))  # one-line error for a bad URL before anything runs
        if self.workers > 1 and self.storage == "memory":
            raise SettingsError("quantize: several workers share a study through a storage, not memory")


def input_counts(settings: Settings, bytes_per_input: float) -> tuple[int, int, str]:
    """(calibration inputs, scoring inputs, why fewer) within `data_mb` of inputs."""
    fit = int(settings.data_mb * 2 ** 20 // max(bytes_per_input, 1))
    calib = max(4, min(settings.calibration_inputs, fit // 2))
    evaluate = max(8, min(settings.eval_inputs, fit))
    why = ""
    if calib < settings.calibration_inputs or evaluate < settings.eval_inputs:
        why = (f"inputs of {bytes_per_input / 2 ** 20:.1f} MB each: {calib} calibrate and {evaluate} score each "
               f"candidate (quantize.data_mb {settings.data_mb:g})")
    return calib, evaluate, why


def native_formats(model_format: str, settings: Settings, file_formats: tuple[str, ...] | list[str]) -> list[str]:
    """Formats quantised without a torch model from a model file of `model_format` (`file_formats`: the formats the
    exporters make from such a file)."""
    return [f for f in BACKENDS if f in file_formats and (f != "tflite" or settings.tflite_backend not in TORCH_BACKENDS)]


def formats_to_quantize(settings: Settings, wanted: tuple[str, ...] | list[str], native: Any,
                        file_formats: Callable[[str], list[str]]) -> tuple[list[str], dict[str, str]]:
    """(the formats to quantise: the setting, else `wanted` (the recipe's export formats or the target's); those a
    model without a torch form (`native`) leaves out, with why)."""
    fmts = [f for f in BACKENDS if f in (settings.formats or wanted)]
    if native is None:
        return fmts, {}
    ok = native_formats(native.format, settings, file_formats(native.format))
    return [f for f in fmts if f in ok], {f: f"needs a torch model ({native.blocker})" for f in fmts if f not in ok}
