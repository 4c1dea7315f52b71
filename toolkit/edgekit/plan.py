"""`--recipe auto`: a recipe planned from the target, the model and the data, under one quality budget.

Each technique is one registered entry (`@technique(name, order)`): a function of the run's `Facts` that returns a
`Decision` (used or not, why, and the stages it adds with their settings). Entries are asked in `order`; the plan is
`check, baseline`, the stages of every used entry (those ordered after EXPORT_ORDER come after `export`, as the INT8
search works on the exported float model), then `verify, measure`. An entry sees which entries were
chosen before it (`facts.chosen`), so a technique that subsumes others (the joint pruning + INT8 search, edgekit.joint)
takes their place by deciding first and the others step aside with a reason.

Without a torch model (the native routes of edgekit.importers.native: an ONNX file onnx2torch cannot convert, a
.tflite file), `gather` says so in the facts: techniques that need a torch model step aside with the reason
(`Facts.no_torch`; a new entry that needs one does the same), export writes the target's formats the file gives,
and the INT8 search covers those.

The budget (`--max-quality-drop`, default 1.0 point of accuracy, or of top-1 agreement with the loaded model when
the data has no labels) is counted from the model as loaded: prune keeps the sparsest round within half of it, and
the INT8 search gets what is left (quantize's chain_budget). Budgets of time are chosen so that the built-in digits
CNN plans and runs in well under a minute on a laptop CPU; they are settings, shown in the report (--set changes them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.targets import Target

PRUNE_SHARE = 0.5  # of the budget, for the sparsest lottery-ticket round
EXPORT_ORDER = 45  # entries ordered before it change the torch model; after it, they work on the exported float model


@dataclass
class Facts:
    """What the planner knows before any stage runs."""

    target: Target
    labelled: bool
    data_name: str
    budget: float
    n_train: int
    prunable: dict[str, str]  # layers a runtime of the target runs sparse (rules.prunable_layers)
    sparse_blocker: str  # why none is, when prunable is empty
    chosen: list[str] = field(default_factory=list)
    # The native routes (edgekit.importers.native): no torch model, only what works on the model file.
    torch_model: bool = True
    model_format: str = ""  # without a torch model: the model file's format ("onnx", "tflite")
    torch_blocker: str = ""  # without a torch model: why, in one line (the operator and node that blocked it)
    file_formats: tuple[str, ...] = ()  # without a torch model: the target's formats that the file gives
    task: str = "classify"  # the run's quality metric (edgekit.quality): its task, name and unit
    metric: str = "accuracy"
    unit: str = "pts"

    @property
    def trains(self) -> bool:
        """Techniques that fine-tune (cross-entropy on class labels) can: a classifier with labelled data."""
        return self.labelled and self.task == "classify"

    def no_training(self, what: str) -> Decision:
        if not self.labelled:
            return Decision(False, f"{what} needs labelled data ('{self.data_name}' has none): post-training "
                                   "techniques only")
        return Decision(False, f"{what} needs class labels, and the run's metric is {self.metric} ({self.task}): "
                               "post-training techniques only")

    def no_torch(self, what: str) -> Decision:
        """The decision of a technique that needs a torch model, on a native route."""
        return Decision(False, f"{what} needs a torch model, and this model has none: {self.torch_blocker}")


@dataclass
class Decision:
    used: bool
    why: str
    stages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class Technique:
    name: str
    order: int
    decide: Callable[[Facts], Decision]


TECHNIQUES: dict[str, Technique] = {}


def technique(name: str, order: int) -> Callable[[Callable[[Facts], Decision]], Callable[[Facts], Decision]]:
    """Registers a planner entry; `order` places its stages in the chain (prune 20, sparsify 30, quantize 50)."""

    def add(fn: Callable[[Facts], Decision]) -> Callable[[Facts], Decision]:
        TECHNIQUES[name] = Technique(name, order, fn)
        return fn

    return add


JOINT_TRAIN_INPUTS = 2000  # fine-tuning inputs per epoch of each pruned candidate (bounds auto's time on big data)
JOINT_FINETUNE_STEPS = 1000  # optimiser steps (batch 32) each pruned candidate gets at least
# Searches meet the quality budget with one paired standard error of margin: on PP-OCR's classifier's 400 test lines
# width 0.5 measured 0.5 +- 1.8 points down, passed a 1-point budget, then lost 2.5 points on new lines.
CONFIDENCE = 1.0
# The INT8 stage's time budget: a format whose search would start after it is skipped (said so in the report). A big
# model's later formats are whole PT2E conversions per candidate (PP-OCRv4's detector at 736x992: minutes each).
QUANT_SECONDS = 480.0


@technique("joint", order=15)
def _joint(f: Facts) -> Decision:
    """Issue 14's joint search: where no runtime of the target runs this model's weights sparse, width (channel
    pruning) and precision are searched together on latency measured in each runtime; it takes quantize's place
    for the formats it builds."""
    if not f.torch_model:
        return f.no_torch("the joint search fine-tunes pruned candidates, so it")
    if not f.trains:
        return f.no_training("fine-tuning pruned candidates")
    if f.prunable:
        return Decision(False, f"{len(f.prunable)} layers run sparse on {f.target.name}: lottery-ticket pruning and "
                               "sparse conversion instead")
    from edgekit.joint.settings import RUNTIMES

    if not any(r.name in RUNTIMES for r in f.target.runtimes):
        return Decision(False, f"it builds and times artifacts for {', '.join(RUNTIMES)}, and {f.target.name} runs "
                               f"{', '.join(r.name for r in f.target.runtimes)}")
    # Steps, not epochs: on PP-OCR's classifier pruned to width 0.75 from the model as loaded, with distillation,
    # 560 steps of 32 on 3000 lines end 2 points above it, while on 800 lines 600 steps leave it 1.35 points down
    # and 900-1200 steps 0.5 (benchmarks/cls_width_finetune.py --pretune 0); width 0.5 stays 2.5+ points down.
    settings = {"max_quality_drop": f.budget, "trials": 12, "widths": [1.0, 0.75, 0.5], "finetune_epochs": 2,
                "finetune_steps": JOINT_FINETUNE_STEPS, "batch_size": 32, "distill": 0.5, "confidence": CONFIDENCE,
                "train_inputs": JOINT_TRAIN_INPUTS, "timing_runs": 10, "final_runs": 60, "max_seconds": 300.0,
                "runtimes": [r.name for r in f.target.runtimes if r.name in RUNTIMES]}
    return Decision(True, f"no runtime of {f.target.name} runs this model's weights sparse ({f.sparse_blocker}): "
                          "channel pruning (widths rounded to the target's channel multiple, fine-tuned with "
                          "distillation from the loaded model) and "
                          "per-layer FP32 / INT8 searched together on latency in each runtime (12 trials), within "
                          f"{f.budget} {f.unit} with one standard error of margin", [("joint", settings)])


@technique("prune", order=20)
def _prune(f: Facts) -> Decision:
    if not f.torch_model:
        return f.no_torch("lottery-ticket pruning retrains the model, so it")
    if "joint" in f.chosen:
        return Decision(False, "the joint search prunes channels instead (no runtime here runs sparse weights: "
                               f"{f.sparse_blocker})")
    if not f.trains:
        return f.no_training("retraining lottery tickets")
    if not f.prunable:
        return Decision(False, f"no runtime of {f.target.name} runs this model's weights sparse ({f.sparse_blocker}); "
                               "zeros would only shrink the file when compressed")
    epochs = 4 if f.n_train <= 20000 else 1
    settings = {"rounds": 4, "rate": 0.3, "epochs": epochs, "target_rules": "on", "reinit_control": False,
                "random_mask_control": False, "max_quality_drop": round(PRUNE_SHARE * f.budget, 4)}
    return Decision(True, f"{len(f.prunable)} layers run sparse on {f.target.name} ({', '.join(sorted(f.prunable)[:4])}"
                          f"{', ...' if len(f.prunable) > 4 else ''}): lottery-ticket pruning of those layers only, "
                          f"4 rounds of 30% ({epochs} epochs of fine-tuning each, from the loaded weights); the "
                          f"sparsest round within {settings['max_quality_drop']} pts is kept",
                    [("prune", settings)])


@technique("sparsify", order=30)
def _sparsify(f: Facts) -> Decision:
    if not f.torch_model:
        return f.no_torch("sparse conversion")
    if "prune" not in f.chosen:
        return Decision(False, "nothing pruned for a sparse runtime")
    return Decision(True, "stores the pruned layers as sparse TFLite tensors for XNNPACK's sparse path",
                    [("sparsify", {"oneshot_sparsity": 0.0})])


@technique("decompose", order=40)
def _decompose(f: Facts) -> Decision:
    if not f.torch_model:
        return f.no_torch("decomposition")
    return Decision(False, "low-rank decomposition trades accuracy for fewer multiply-adds, which is not faster on "
                           "every runtime; auto does not plan it yet (use --recipe decompose with budget: latency)")


@technique("quantize", order=50)
def _quantize(f: Facts) -> Decision:
    from edgekit.quant.settings import BACKENDS

    if "joint" in f.chosen:  # the joint search chose the precision of the formats it builds; the others remain
        from edgekit.joint.settings import RUNTIMES as JOINT_RUNTIMES

        fmts = [r.format for r in f.target.runtimes if r.int8 and r.format in BACKENDS
                and r.name not in JOINT_RUNTIMES]
        if not fmts:
            return Decision(False, "the joint search chose each layer's precision together with its width")
        settings = {"chain_budget": True, "max_quality_drop": f.budget, "confidence": CONFIDENCE, "trials": 16,
                    "timing_runs": 10, "final_runs": 60, "max_seconds": 300.0, "total_seconds": QUANT_SECONDS,
                    "skip_failing_formats": True, "formats": fmts}
        return Decision(True, f"per-layer INT8 policy search for {', '.join(fmts)}, which the joint search does "
                              "not build (it chose the precision of the others together with their width), on the "
                              "joint search's model and within what it left of the budget", [("quantize", settings)])
    fmts = [r.format for r in f.target.runtimes if r.int8 and r.format in BACKENDS
            and (f.torch_model or r.format in f.file_formats)]
    if not fmts:
        return Decision(False, f"no runtime of {f.target.name} has an INT8 backend in edgekit"
                               + ("" if f.torch_model else " that works on the model file"))
    settings = {"chain_budget": True, "max_quality_drop": f.budget, "confidence": CONFIDENCE, "trials": 16,
                "timing_runs": 10, "final_runs": 60, "max_seconds": 300.0, "total_seconds": QUANT_SECONDS,
                "skip_failing_formats": True}
    if not f.torch_model:
        settings["formats"] = fmts
    metric = f.metric if f.labelled or f.task != "classify" else "top-1 agreement with the loaded model"
    return Decision(True, f"per-layer INT8 policy search on latency measured in {', '.join(fmts)} runtimes "
                          f"(16 trials, at most {settings['max_seconds']:g} s each and {QUANT_SECONDS:g} s for the "
                          f"stage; {metric}; whatever the earlier stages left of the budget); a layer stays "
                          "float where INT8 is slower or loses quality", [("quantize", settings)])


def plan(facts: Facts) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(recipe mapping, [{"name", "used", "why", "stages"}]) for these facts."""
    stages: list[dict[str, Any]] = [{"check": {}}, {"baseline": {}}]
    decisions = []
    exported = False
    # Without a torch model, export writes the target's formats the model file gives, and says so in the plan.
    export = {} if facts.torch_model else {"formats": list(facts.file_formats)}
    for t in sorted(TECHNIQUES.values(), key=lambda t: t.order):
        if t.order > EXPORT_ORDER and not exported:
            stages.append({"export": export})
            exported = True
        d = t.decide(facts)
        if d.used:
            facts.chosen.append(t.name)
            stages += [{name: settings} for name, settings in d.stages]
        decisions.append({"name": t.name, "used": d.used, "why": d.why, "stages": [n for n, _ in d.stages]})
    stages += ([] if exported else [{"export": export}]) + [{"verify": {}}, {"measure": {}}]
    return {"stages": stages}, decisions


def gather(model: Any, input_shape: tuple[int, ...], data: Any, target: Target, budget: float,
           native: Any = None, metric: Any = None) -> Facts:
    """The facts the planner needs: the sparse-capable layers cost one TFLite conversion on ARM / WASM targets.

    Args:
        native: the model file (importers.native.NativeModel) when the model has no torch form.
        metric: the run's quality metric (edgekit.quality): training techniques need a classifier's labels.
    """
    from edgekit import rules

    about = {"task": getattr(metric, "task", "classify"), "metric": getattr(metric, "name", "accuracy" if data.labelled else "agreement"),
             "unit": getattr(metric, "unit", "pts")}
    if native is not None:
        return _native_facts(native, data, target, budget, about)
    prunable: dict[str, str] = {}
    blocker = ""
    sparse_rts = [r for r in target.runtimes if r.sparse_rules not in ("", "none")]
    if not sparse_rts:
        blocker = "; ".join(rules.get(r.sparse_rules).reason(r.name) for r in target.runtimes)
    elif (cpu := rules.get("xnnpack").cpu_blocker(target)) is not None:
        blocker = cpu
    elif data.labelled and about["task"] == "classify":
        prunable = rules.prunable_layers(model, target, tuple(input_shape))
        blocker = "" if prunable else "`edgekit check` finds no 1x1 convolution in a group XNNPACK runs sparse"
    return Facts(target=target, labelled=data.labelled, data_name=data.name, budget=budget,
                 n_train=len(data.x_train), prunable=prunable, sparse_blocker=blocker, **about)


def _native_facts(native: Any, data: Any, target: Target, budget: float, about: dict[str, Any]) -> Facts:
    from edgekit import export as exporters
    from edgekit.errors import SettingsError

    makeable = exporters.file_formats(native.format)
    fmts = tuple(f for f in target.formats if f in makeable)
    if not fmts:
        raise SettingsError(f"--recipe auto: no format of target {target.name} ({', '.join(target.formats)}) can be "
                            f"written from this .{native.format} model without a torch model ({native.blocker})")
    return Facts(target=target, labelled=data.labelled, data_name=data.name, budget=budget,
                 n_train=len(data.x_train), prunable={}, sparse_blocker="no torch model", torch_model=False,
                 model_format=native.format, torch_blocker=native.blocker, file_formats=fmts, **about)


def describe(decisions: list[dict[str, Any]], facts: Facts) -> str:
    used = [d["name"] for d in decisions if d["used"]]
    against = "labels" if facts.labelled else "the loaded model's outputs"
    why_not = "no labelled data: " if not facts.labelled else f"a {facts.task} metric: "
    data = (f"quality: {facts.metric} ({facts.task}) against {against}; "
            + ("training techniques allowed" if facts.trains else f"{why_not}post-training techniques only"))
    route = "" if facts.torch_model else (
        f" The model has no torch form ({facts.torch_blocker}): the {facts.model_format.upper()}-native route "
        f"works on the file ({', '.join(facts.file_formats)} artifacts; reference: the original file in its own "
        "runtime).")
    unit = "point" if facts.unit == "pts" else facts.unit
    return (f"Planned for {facts.target.name} under a {facts.budget}-{unit} quality budget from the model as loaded; "
            f"{data}. Chosen: {', '.join(used) or 'export only'}.{route}")
