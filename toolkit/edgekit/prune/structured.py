"""Structured lottery tickets: iterative magnitude pruning over channel groups, with rewinding, one checkpoint per
round (the structured counterpart of edgekit.prune.imp).

Round 0 trains the full-width network and keeps its weights at `rewind_step`. Round r >= 1 ranks each channel group
of round r-1's trained network by magnitude (edgekit.prune.channels, on Torch-Pruning's dependency graph), removes the
weakest channels so that each group keeps (1 - rate)^r of its original channels (rounded to the target's channel
multiple), cuts the same channels out of the rewind point and trains that thinner dense network: the ticket.

Controls (Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019, ask exactly this of structured pruning):
the same thin architecture trained from a fresh random initialisation ("reinit"), and randomly chosen channels with
the same per-group counts from the rewind point ("random_masks"). A structured ticket is worth its search only when
it beats the re-initialised thin network.

A round is a pure function of the previous round's checkpoint (pruning history, trained weights, rewind point) and
the seed, so a killed run resumes from its last finished round and ends where an uninterrupted run ends.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import SettingsError
from edgekit.fileio import atomic_path, fingerprint, write_json
from edgekit.masks import Mask
from edgekit.prune.channels import ChannelPruner, plan_removal, replay, round_channels
from edgekit.prune.imp import (
    _accuracy,
    _array_hash,
    _cpu_state,
    _reinitialise,
    _state_hash,
    _Trainer,
    deterministic,
    round_seed,
    steps_per_round,
)

if TYPE_CHECKING:
    import torch.nn as nn

CHECKPOINT_VERSION = 1
NO_MASK = Mask({})


@dataclass
class ChannelImpResult:
    """A finished structured IMP run; `model` is the last round's trained (thin, dense) ticket."""

    model: nn.Module
    rounds: list[dict[str, Any]]
    history: list[list[Any]]  # Torch-Pruning history: replay it on the original model to rebuild the ticket
    groups: list[dict[str, Any]]  # per group of the original model: name, channels, layers, prunable, reason
    resumed_from: int | None = None
    fingerprint: str = ""
    widths: dict[str, int] = field(default_factory=dict)  # the ticket's channels per group


def targets(original: dict[str, int], rate: float, r: int, multiple: int) -> dict[str, int]:
    """Channels each prunable group keeps in round r: (1 - rate)^r of its original count, rounded to `multiple`."""
    return {n: round_channels(c * (1 - rate) ** r, c, multiple) for n, c in original.items()}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _random_removal(pruner: ChannelPruner, keep: dict[str, int], seed: int) -> dict[str, list[int]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, k in keep.items():
        n = pruner.group(name).channels
        if k < n:
            out[name] = sorted(torch.randperm(n, generator=gen)[: n - k].tolist())
    return out


class _Run:
    """State shared by the rounds of one run."""

    def __init__(self, model: nn.Module, example: Any, settings: Any, multiple: int, ignored: tuple[str, ...],
                 trainer: _Trainer, data: tuple[np.ndarray, np.ndarray]) -> None:
        self.model, self.example, self.s, self.multiple, self.ignored = model, example, settings, multiple, ignored
        self.trainer, (self.x_test, self.y_test) = trainer, data
        pruner = ChannelPruner(copy.deepcopy(model), example, ignored)
        self.groups = [g.as_dict() for g in pruner.groups]
        self.original = {g.name: g.channels for g in pruner.prunable()}
        if not self.original:
            reasons = "; ".join(f"{g.name}: {g.reason}" for g in pruner.groups)
            raise SettingsError(f"no channel group can be pruned ({reasons or 'no conv or linear layer'})")
        self.params0 = _params(model)

    def record(self, r: int, widths: dict[str, int], ticket: float, reinit: float | None, random: float | None,
               steps: int, start: float) -> dict[str, Any]:
        kept, total = sum(widths.values()), sum(self.original.values())
        return {"round": r, "remaining": _params(self.model) / self.params0, "params": _params(self.model),
                "channels_remaining": kept / total, "widths": dict(widths), "ticket": ticket, "reinit": reinit,
                "random_masks": random, "steps": steps, "seconds": round(time.perf_counter() - start, 3)}

    def prune_round(self, r: int, trained: dict, rewind: dict) -> tuple[dict[str, int], dict[str, list[int]], Any]:
        """Ranks channels on the trained weights and cuts them from the rewind point (in self.model)."""
        self.model.load_state_dict(trained)
        pruner = ChannelPruner(self.model, self.example, self.ignored)
        current = {n: pruner.group(n).channels for n in self.original}
        keep = {n: min(k, current[n]) for n, k in targets(self.original, self.s.rate, r, self.multiple).items()}
        removed = plan_removal(pruner, keep)
        self.model.load_state_dict(rewind)
        control = copy.deepcopy(self.model) if self.s.random_mask_control else None
        pruner.prune(removed)
        if control is not None:
            cp = ChannelPruner(control, self.example, self.ignored)
            cp.prune(_random_removal(cp, keep, round_seed(self.s.seed, r, 3)))
        return keep, pruner.history(), control

    def round(self, r: int, trained: dict, rewind: dict) -> tuple[dict[str, Any], list[list[Any]], dict, dict]:
        """Round r >= 1: prune, rewind, train the ticket and the controls. Returns (record, this round's pruning
        history, trained weights, rewind point); self.model ends holding the trained ticket."""
        start = time.perf_counter()
        s, model = self.s, self.model
        keep, history, control = self.prune_round(r, trained, rewind)
        rewind = _cpu_state(model)
        acc, steps, _ = self.train_eval(model, round_seed(s.seed, r), f"round {r}: ticket")
        trained = _cpu_state(model)
        reinit_acc = random_acc = None
        if s.reinit_control:
            fresh = _reinitialise(model, round_seed(s.seed, r, 1))
            reinit_acc = self.train_eval(fresh, round_seed(s.seed, r, 2), f"round {r}: re-init control")[0]
        if control is not None:
            random_acc = self.train_eval(control, round_seed(s.seed, r, 4), f"round {r}: random-channels control")[0]
        model.load_state_dict(trained)
        return self.record(r, keep, acc, reinit_acc, random_acc, steps, start), history, trained, rewind

    def train_eval(self, model: nn.Module, seed: int, what: str, capture: int | None = None) -> tuple[float, int, Any]:
        steps, captured = self.trainer.train(model, NO_MASK, seed, capture, what)
        return _accuracy(model, self.x_test, self.y_test), steps, captured


def run_channel_imp(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray, settings: Any, example: Any, multiple: int = 1, folder: str | Path | None = None,
                    *, ignored: Iterable[str] = (), progress: Any = None,
                    on_round: Callable[[dict[str, Any]], None] | None = None) -> ChannelImpResult:
    """Runs (or resumes) IMP over channel groups; `model` ends as the last round's trained, thinner ticket.

    Args:
        model: its current weights are round 0's initialisation; it is pruned in place.
        x_train, y_train, x_test, y_test: training data and the labelled split accuracies are reported on.
        settings: the prune stage's Settings (rounds, rate, rewind_step, training, seed, controls).
        example: one input batch (for Torch-Pruning's tracing).
        multiple: kept channel counts are multiples of this (the target's channel_multiple).
        folder: where each round is checkpointed; None keeps everything in memory (no resume).
        ignored: module names whose output channels stay.
        progress: a rich Progress; on_round: called with each round's record (also for rounds read back).
    """
    from edgekit.train import pick_device

    device = pick_device(settings.device)
    if settings.rewind_step > steps_per_round(len(x_train), settings):
        raise SettingsError(f"rewind_step {settings.rewind_step} is beyond the "
                            f"{steps_per_round(len(x_train), settings)} steps of a round")
    model.cpu().eval()
    ignored = tuple(ignored)
    run = _Run(model, example, settings, multiple, ignored, _Trainer(settings, x_train, y_train, device, progress),
               (x_test, y_test))
    init_state = _cpu_state(model)
    fp = fingerprint(CHECKPOINT_VERSION, "channel", {k: v for k, v in asdict(settings).items() if k != "rounds"},
                     multiple, list(ignored), _state_hash(init_state), _array_hash(x_train, y_train, x_test, y_test))
    folder = Path(folder) if folder is not None else None
    rounds, last = _load(folder, fp, settings.rounds) if folder is not None else ([], None)
    resumed_from = len(rounds) - 1 if rounds else None
    task = progress.add_task("structured lottery rounds", total=settings.rounds + 1) if progress else None
    for rec in rounds:
        _emit(on_round, rec, progress, task)
    with deterministic():
        if last is None:
            start = time.perf_counter()
            capture = settings.rewind_step if settings.rewind_step > 0 else None
            acc, steps, captured = run.train_eval(model, round_seed(settings.seed, 0), "round 0: full width", capture)
            history: list[list[Any]] = []
            rewind, trained = captured if captured is not None else init_state, _cpu_state(model)
            rec = run.record(0, dict(run.original), acc, None, None, steps, start)
            rounds.append(rec)
            _save(folder, 0, {"history": history, "state": trained, "rewind": rewind}, fp, rounds)
            _emit(on_round, rec, progress, task)
        else:
            history, trained, rewind = last["history"], last["state"], last["rewind"]
            replay(model, example, history)
            model.load_state_dict(trained)
        for r in range(len(rounds), settings.rounds + 1):
            rec, new_history, trained, rewind = run.round(r, trained, rewind)
            history = history + new_history
            rounds.append(rec)
            _save(folder, r, {"history": history, "state": trained, "rewind": rewind}, fp, rounds)
            _emit(on_round, rec, progress, task)
    model.load_state_dict(trained)
    model.cpu().eval()
    if task is not None:
        progress.remove_task(task)
    return ChannelImpResult(model, rounds, history, run.groups, resumed_from, fp, dict(rounds[-1]["widths"]))


def _emit(on_round: Callable | None, rec: dict[str, Any], progress: Any, task: Any) -> None:
    if on_round is not None:
        on_round(rec)
    if task is not None:
        progress.advance(task)


def _path(folder: Path, r: int) -> Path:
    return folder / f"round-{r:03d}.pt"


def _save(folder: Path | None, r: int, ck: dict[str, Any], fp: str, rounds: list[dict[str, Any]]) -> None:
    """Writes round r atomically; the round counts as finished once its file exists."""
    import torch

    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    if r == 0:
        for old in folder.glob("round-*.pt"):  # a fresh run: rounds of other settings must not mix in
            old.unlink()
        write_json(folder / "meta.json", {"fingerprint": fp, "version": CHECKPOINT_VERSION, "structure": "channel"})
    payload = {"state": ck["state"], "rewind": ck["rewind"], "history": json.dumps(ck["history"]),
               "record": json.dumps(rounds[-1])}
    with atomic_path(_path(folder, r)) as tmp:
        torch.save(payload, tmp)
    write_json(folder / "rounds.json", rounds)


def _load(folder: Path, fp: str, last_round: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(records of rounds 0..k, round k's checkpoint) of an earlier run with the same fingerprint, k <= last_round."""
    import torch

    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return [], None
    if meta.get("fingerprint") != fp:
        return [], None
    records: list[dict[str, Any]] = []
    last = None
    r = 0
    while r <= last_round and _path(folder, r).is_file():
        try:
            ck = torch.load(_path(folder, r), map_location="cpu", weights_only=True)
            ck["record"], ck["history"] = json.loads(ck["record"]), json.loads(ck["history"])
        except Exception:  # an unreadable round is redone, never trusted
            break
        records.append(ck["record"])
        last = ck
        r += 1
    return records, last
