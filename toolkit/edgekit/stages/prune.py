"""prune: find a winning ticket by iterative magnitude pruning with rewinding, with the paper's controls.

`structure: weights` (the default) prunes single weights or blocks and keeps the architecture (pruned weights are
exact zeros; <run>/prune/mask.pt holds the mask). `structure: channel` prunes whole channel groups with Torch-Pruning
and returns a thinner dense network (<run>/prune/channels.json holds the pruning history that rebuilds it); one
stage, because both are the same IMP procedure with the same settings, controls, checkpoints and report. Every
round is checkpointed under <run>/prune/; a killed run resumes from its last finished round. The report gets a plot
of accuracy against weights remaining (ticket, re-init, random masks or channels) and a per-layer table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.contract import Contract
from edgekit.errors import SettingsError

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

CONTRACT = Contract(needs=frozenset({"torch", "labels"}), changes=frozenset({"weights", "masks"}), keeps_masks=False,
                    masks_note="a new ticket search starts from a dense mask", outputs=("prune",))
CHANNEL_CONTRACT = Contract(needs=frozenset({"torch", "labels"}), changes=frozenset({"weights", "structure"}),
                            keeps_masks=False, masks_note="channel pruning changes the shapes the masks were made for",
                            outputs=("prune",))
_OPTIMIZERS = ("adam", "sgd")
_SCHEDULES = ("none", "cosine")
_DEVICES = ("auto", "cpu", "cuda")
STRUCTURES = ("weights", "channel")


@dataclass(frozen=True)
class Settings:
    structure: str = field(default="weights", metadata={
        "help": "weights: prune single weights or blocks (sparse masks); channel: prune whole channel groups "
                "(a thinner dense network)"})
    channel_multiple: int = field(default=0, metadata={
        "help": "structure channel: kept channels are multiples of this (0: the target's channel_multiple)"})
    rounds: int = field(default=5, metadata={"help": "pruning rounds after the dense round 0"})
    rate: float = field(default=0.2, metadata={"help": "fraction of the surviving weights removed per round"})
    ranking: str = field(default="layer", metadata={"help": "layer: rank each layer alone; global: rank all "
                                                            "layers pruned at `rate` together"})
    layers: str | tuple[str, ...] = field(default="conv+linear", metadata={
        "help": "conv+linear, conv, linear, or a list of layer (module) names"})
    first_layer_scale: float = field(default=0.5, metadata={"help": "the first layer is pruned at rate x this"})
    last_layer_scale: float = field(default=0.5, metadata={"help": "the last layer is pruned at rate x this"})
    pattern: str = field(default="unstructured", metadata={"help": "unstructured, 1x4, 4x1 or N:M (e.g. 2:4)"})
    target_rules: str = field(default="auto", metadata={
        "help": "auto: prune only the layers the target's runtime runs sparse, when it has such rules and a "
                "layer qualifies; on: require them; off: ignore them"})
    rewind_step: int = field(default=0, metadata={"help": "training step the survivors are reset to "
                                                          "(0: the original initialisation)"})
    optimizer: str = field(default="adam", metadata={"help": "adam or sgd (momentum 0.9)"})
    lr: float = field(default=1.2e-3, metadata={"help": "learning rate"})
    schedule: str = field(default="none", metadata={"help": "learning-rate schedule per round: none or cosine"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    epochs: int = field(default=20, metadata={"help": "training epochs per round"})
    batch_size: int = field(default=64, metadata={"help": "batch size"})
    seed: int = field(default=0, metadata={"help": "seed of every random choice (data order, controls)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto (cuda when present)"})
    reinit_control: bool = field(default=True, metadata={"help": "also train each mask from a random "
                                                                 "re-initialisation (the paper's control)"})
    random_mask_control: bool = field(default=True, metadata={"help": "also train a random mask with the same "
                                                                      "per-layer sparsity"})
    max_quality_drop: float = field(default=0.0, metadata={
        "help": "keep the sparsest round whose accuracy is within this many points of the model before pruning "
                "(0: keep the last round)"})

    def __post_init__(self) -> None:
        from edgekit.prune.patterns import parse_pattern

        if not isinstance(self.rounds, int) or not 0 <= self.rounds <= 200:
            raise SettingsError(f"rounds must be an integer in 0..200, got {self.rounds!r}")
        if not isinstance(self.rate, (int, float)) or not 0 < self.rate < 1:
            raise SettingsError(f"rate must be in (0, 1), got {self.rate!r}")
        for name in ("first_layer_scale", "last_layer_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v * self.rate < 1:
                raise SettingsError(f"{name} must be >= 0 with {name} x rate < 1, got {v!r}")
        choices = {"structure": STRUCTURES, "ranking": ("layer", "global"), "target_rules": ("auto", "on", "off"),
                   "optimizer": _OPTIMIZERS, "schedule": _SCHEDULES, "device": _DEVICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not ((isinstance(self.layers, str) and self.layers in ("conv+linear", "conv", "linear"))
                or (isinstance(self.layers, tuple) and self.layers and all(isinstance(n, str) for n in self.layers))):
            raise SettingsError(f"layers must be conv+linear, conv, linear or a non-empty list of layer names, "
                                f"got {self.layers!r}")
        parse_pattern(self.pattern)
        if self.structure == "channel" and self.pattern != "unstructured":
            raise SettingsError(f"pattern {self.pattern} applies to structure weights; structure channel prunes "
                                "whole channels")
        if not isinstance(self.channel_multiple, int) or self.channel_multiple < 0:
            raise SettingsError(f"channel_multiple must be an integer >= 0, got {self.channel_multiple!r}")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SettingsError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.rewind_step, int) or self.rewind_step < 0:
            raise SettingsError(f"rewind_step must be an integer >= 0, got {self.rewind_step!r}")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise SettingsError(f"lr must be positive, got {self.lr!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise SettingsError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.max_quality_drop, (int, float)) or self.max_quality_drop < 0:
            raise SettingsError(f"max_quality_drop must be >= 0, got {self.max_quality_drop!r}")
        if not isinstance(self.seed, int):
            raise SettingsError(f"seed must be an integer, got {self.seed!r}")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise SettingsError("device cuda was asked for but torch sees no CUDA device; use cpu or auto")


def contract(settings: Settings) -> Contract:
    """structure channel makes a thinner network (no masks); structure weights makes masks."""
    return CHANNEL_CONTRACT if settings.structure == "channel" else CONTRACT


def run(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    """Finds a winning ticket by iterative magnitude pruning with rewinding; returns the last round's ticket."""
    from edgekit.prune import report as prune_report
    from edgekit.prune.imp import run_imp
    from edgekit.prune.layers import plan_layers
    from edgekit.prune.patterns import parse_pattern
    from edgekit.train import accuracy, predict

    data = ctx.data
    if not data.labelled:
        raise SettingsError(f"prune trains the model and needs labelled data; '{data.name}' has no labels "
                            "(pass --data digits, an image folder or an .npz with x and y)")
    if settings.structure == "channel":
        from edgekit.stages._prune_channel import run_channel

        return run_channel(model, settings, ctx)
    pattern = parse_pattern(settings.pattern)
    plan = plan_layers(model, settings, ctx.target, ctx.bundle.input_shape, pattern)
    folder = ctx.out / "prune"
    if not getattr(ctx, "resume", True):  # --fresh: the rounds of an earlier run are not resumed either
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    before = accuracy(predict(model, data.x_test), data.y_test)  # on the split run_imp scores every round on
    result = run_imp(model, data.x_train, data.y_train, data.x_test, data.y_test, settings, plan.rates, folder,
                     progress=ctx.progress)
    kept = _within_budget(result, folder, settings, before)
    mask_path = result.mask.save(folder / "mask.pt")
    ctx.masks = result.mask  # later stages keep these zeros (edgekit.contract)
    rounds = result.rounds
    last = rounds[kept]
    sparsity = result.mask.sparsity_report()
    plot = prune_report.plot_rounds(folder / "lottery.png", rounds, f"{ctx.bundle.name}: {pattern.name}, "
                                    f"{settings.ranking} ranking, rewind to step {settings.rewind_step}")
    ctx.add_section("Lottery ticket: accuracy vs weights remaining",
                    prune_report.rounds_markdown(rounds, plot.relative_to(ctx.out).as_posix()))
    ctx.add_section("Lottery ticket: per-layer sparsity", prune_report.layers_markdown(sparsity, plan))
    ctx.record(
        metrics={"accuracy": last["ticket"], "dense_accuracy": rounds[0]["ticket"],
                 "weights_remaining": last["remaining"],
                 **({"reinit_accuracy": last["reinit"]} if last["reinit"] is not None else {}),
                 **({"random_mask_accuracy": last["random_masks"]} if last["random_masks"] is not None else {})},
        details={"rounds": rounds, "mask": mask_path.relative_to(ctx.out).as_posix(), "sparsity": sparsity,
                 "pattern": pattern.name, "layer_rates": plan.rates, "dense_layers": plan.dense,
                 "target_rules": plan.target_note, "sparse_reasons": plan.sparse_ok,
                 "resumed_from_round": result.resumed_from, "plot": plot.relative_to(ctx.out).as_posix(),
                 "kept_round": kept, "accuracy_before": before,
                 "settings": asdict(settings),
                 "note": "accuracies are on the test split after each round's training; weights remaining counts "
                         "the pruned layers' weights"})
    return result.model


def _within_budget(result: Any, folder: Any, settings: Settings, before: float) -> int:
    """With max_quality_drop, loads the sparsest round within it (into result.model/.mask); returns its index."""
    import torch

    from edgekit.masks import Mask
    from edgekit.prune.imp import _round_path

    last = len(result.rounds) - 1
    if settings.max_quality_drop <= 0:
        return last
    ok = [r["round"] for r in result.rounds if 100.0 * (before - r["ticket"]) <= settings.max_quality_drop + 1e-9]
    kept = max(ok) if ok else 0
    if kept != last:
        ck = torch.load(_round_path(folder, kept), weights_only=True)
        result.model.load_state_dict(ck["state"])
        result.mask = Mask(ck["mask"])
    return kept


def restore(model: nn.Module, settings: Settings, ctx: RunContext) -> nn.Module:
    """Rebuilds the thinner architecture of a finished channel prune, so that its checkpoint loads into it."""
    if settings.structure != "channel":
        return model
    from edgekit.stages._prune_channel import restore_channels

    return restore_channels(model, ctx)
