"""Iterative magnitude pruning with rewinding (Frankle & Carbin, ICLR 2019; Frankle et al. 2019), one checkpoint
per round.

Round 0 trains the dense network and keeps its weights at step `rewind_step` (the rewind point; step 0 is the
original initialisation). Round r >= 1 prunes a fraction of the weights that survived round r-1 by magnitude of its
trained weights, resets the survivors to the rewind point and trains again: that network is the ticket. The paper's
controls train the same mask from a fresh random initialisation ("reinit") and a random mask with the same per-layer
counts from the rewind point ("random_masks").

A round is a pure function of the previous round's checkpoint and the seed (every random choice is seeded from
(seed, round)), so a run killed at any point resumes from its last finished round and ends bit-for-bit where an
uninterrupted run ends, on the same machine with the same thread count.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import SettingsError
from edgekit.fileio import atomic_path, fingerprint, write_json
from edgekit.masks import Mask
from edgekit.prune.patterns import Pattern, expand_units, lowest_alive, parse_pattern, prune_nm, unit_scores

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

CHECKPOINT_VERSION = 1


@dataclass
class ImpResult:
    """What a finished IMP run returns (the model holds the last round's trained ticket)."""

    model: nn.Module
    mask: Mask
    rounds: list[dict[str, Any]]
    resumed_from: int | None = None  # the last finished round found in the folder, None for a fresh run
    fingerprint: str = ""
    masks: list[Mask] = field(default_factory=list)


def next_mask(model: nn.Module, mask: Mask, layer_rates: dict[str, float], pattern: Pattern,
              global_rate: float | None = None) -> Mask:
    """Prunes, by magnitude, a fraction of each layer's surviving weights (or blocks, or N:M group members).

    Args:
        model: holds the trained weights that are ranked.
        mask: the current mask; the result is always within it.
        layer_rates: parameter name -> fraction of its surviving units removed this round.
        pattern: unstructured, block or N:M.
        global_rate: when set, layers whose rate equals it are ranked together (global magnitude pruning) and
            lose that fraction of their pooled surviving units; other layers are ranked alone at their own rate.
    """
    import torch

    params = dict(model.named_parameters())
    new: dict[str, torch.Tensor] = {}
    if pattern.kind == "nm":
        return Mask({n: prune_nm(params[n], mask[n], pattern, r) for n, r in layer_rates.items()})
    pooled = [n for n, r in layer_rates.items() if global_rate is not None and r == global_rate]
    for name, rate in layer_rates.items():
        if name in pooled:
            continue
        scores, alive = unit_scores(params[name], mask[name], pattern)
        keep = lowest_alive(scores, alive, round(rate * int(alive.sum())))
        new[name] = expand_units(keep, mask[name], pattern)
    if pooled:
        parts = [unit_scores(params[n], mask[n], pattern) for n in pooled]
        scores = torch.cat([s for s, _ in parts])
        alive = torch.cat([a for _, a in parts])
        keep = lowest_alive(scores, alive, round(global_rate * int(alive.sum())))
        start = 0
        for name, (s, _) in zip(pooled, parts, strict=True):
            new[name] = expand_units(keep[start:start + len(s)], mask[name], pattern)
            start += len(s)
    return Mask({n: new[n] for n in layer_rates})


def round_seed(seed: int, rnd: int, salt: int = 0) -> int:
    """The seed of one random choice in one round: independent of how the run got there (fresh or resumed)."""
    return (seed * 1_000_003 + rnd * 7919 + salt) % (2**31 - 1)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """torch's deterministic algorithms for the duration (warn only where an op has no deterministic version)."""
    import torch

    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _array_hash(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"none" if a is None else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with every layer's parameters drawn afresh (the paper's random re-initialisation)."""
    import torch

    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


class _Trainer:
    """Trains a masked model with the run's settings; re-applies the mask after every optimiser step."""

    def __init__(self, settings: Any, x: np.ndarray, y: np.ndarray, device: str, progress: Any = None):
        self.s, self.x, self.y, self.device, self.progress = settings, x, y, device, progress
        self.probabilities: bool | None = None

    def train(self, model: nn.Module, mask: Mask, seed: int, capture_step: int | None = None,
              description: str = "training") -> tuple[int, dict[str, torch.Tensor] | None]:
        import torch

        from edgekit.train import fit

        model.to(self.device)
        mask.apply(model)
        params = dict(model.named_parameters())
        pairs = [(params[n], m.to(self.device, params[n].dtype)) for n, m in mask.items()]
        captured: dict[str, Any] = {}

        def after_step(m: nn.Module, step: int) -> None:
            with torch.no_grad():
                for p, keep in pairs:
                    p.mul_(keep)
            if capture_step is not None and step == capture_step:
                captured["state"] = _cpu_state(m)

        if self.probabilities is None:  # a deployment graph ending in a softmax trains on its log-likelihood
            from edgekit.train import outputs_are_probabilities

            self.probabilities = outputs_are_probabilities(model.cpu(), self.x)
            model.to(self.device)
        torch.manual_seed(seed)
        steps = fit(model, self.x, self.y, epochs=self.s.epochs, lr=self.s.lr, batch_size=self.s.batch_size,
                    seed=seed, optimizer=self.s.optimizer, schedule=self.s.schedule,
                    weight_decay=self.s.weight_decay, device=self.device, after_step=after_step,
                    progress=self.progress, description=description, probabilities=self.probabilities)
        return steps, captured.get("state")


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    from edgekit.train import accuracy, predict

    return accuracy(predict(model, x), y)


def steps_per_round(n_train: int, settings: Any) -> int:
    return settings.epochs * -(-n_train // settings.batch_size)


def run_imp(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
            settings: Any, layer_rates: dict[str, float], folder: str | Path | None = None, *,
            progress: Any = None, on_round: Callable[[dict[str, Any]], None] | None = None) -> ImpResult:
    """Runs (or resumes) iterative magnitude pruning; `model` ends holding the last round's trained ticket.

    Args:
        model: its current weights are the initialisation of round 0.
        x_train, y_train, x_test, y_test: training data and the labelled split that accuracies are reported on.
        settings: the prune stage's Settings (rounds, rate, ranking, pattern, rewind_step, training settings,
            seed, device, reinit_control, random_mask_control).
        layer_rates: parameter name -> pruning rate per round (the layers that are pruned).
        folder: where each round is checkpointed; None keeps everything in memory (no resume).
        progress: a rich Progress for the bars.
        on_round: called with each round's record as it finishes (also for rounds read back on resume).
    """

    from edgekit.train import pick_device

    if not layer_rates:
        raise SettingsError("nothing to prune: no layer was selected")
    pattern = parse_pattern(settings.pattern)
    device = pick_device(settings.device)
    total_steps = steps_per_round(len(x_train), settings)
    if settings.rewind_step > total_steps:
        raise SettingsError(f"rewind_step {settings.rewind_step} is beyond the {total_steps} steps of a round")
    model.cpu()
    init_state = _cpu_state(model)
    # Round r does not depend on how many rounds follow it, so `rounds` stays out of the fingerprint: asking for
    # more rounds later extends a finished run instead of starting over.
    fp = fingerprint(CHECKPOINT_VERSION, {k: v for k, v in asdict(settings).items() if k != "rounds"}, layer_rates,
                     _state_hash(init_state), _array_hash(x_train, y_train, x_test, y_test))
    folder = Path(folder) if folder is not None else None
    ckpts = _load_rounds(folder, fp, settings.rounds) if folder is not None else []
    resumed_from = len(ckpts) - 1 if ckpts else None
    trainer = _Trainer(settings, x_train, y_train, device, progress)
    global_rate = settings.rate if settings.ranking == "global" else None
    task = progress.add_task("lottery rounds", total=settings.rounds + 1) if progress is not None else None
    rounds: list[dict[str, Any]] = []
    masks: list[Mask] = []
    for ck in ckpts:
        rounds.append(ck["record"])
        masks.append(Mask(ck["mask"]))
        if on_round is not None:
            on_round(ck["record"])
        if task is not None:
            progress.advance(task)
    with deterministic():
        if not ckpts:
            start = time.perf_counter()
            mask = Mask.ones(model, layer_rates)
            capture = settings.rewind_step if settings.rewind_step > 0 else None
            rewind = init_state
            steps, captured = trainer.train(model, mask, round_seed(settings.seed, 0), capture,
                                            "round 0: dense")
            if captured is not None:
                rewind = captured
            acc = _accuracy(model, x_test, y_test)
            record = _record(0, mask, acc, None, None, steps, start)
            ck = {"mask": mask.state(), "state": _cpu_state(model), "rewind": rewind, "record": record}
            _save_round(folder, 0, ck, fp, rounds + [record])
            ckpts.append(ck)
            rounds.append(record)
            masks.append(mask)
            _report(on_round, record, progress, task)
        rewind = ckpts[0]["rewind"]
        last = ckpts[-1]
        mask, trained = Mask(last["mask"]), last["state"]
        del ckpts  # only the rewind point and the last round are needed from here on
        for r in range(len(rounds), settings.rounds + 1):
            start = time.perf_counter()
            model.load_state_dict(trained)
            new = next_mask(model, mask, layer_rates, pattern, global_rate)
            new.check_within(mask)
            mask = new
            model.load_state_dict(rewind)
            steps, _ = trainer.train(model, mask, round_seed(settings.seed, r), None, f"round {r}: ticket")
            acc = _accuracy(model, x_test, y_test)
            trained = _cpu_state(model)
            reinit_acc = random_acc = None
            if settings.reinit_control:
                control = _reinitialise(model, round_seed(settings.seed, r, 1))
                trainer.train(control, mask, round_seed(settings.seed, r, 2), None, f"round {r}: re-init control")
                reinit_acc = _accuracy(control, x_test, y_test)
            if settings.random_mask_control:
                control = copy.deepcopy(model)
                control.load_state_dict(rewind)
                trainer.train(control, mask.random_like(round_seed(settings.seed, r, 3)),
                              round_seed(settings.seed, r, 4), None, f"round {r}: random-mask control")
                random_acc = _accuracy(control, x_test, y_test)
            record = _record(r, mask, acc, reinit_acc, random_acc, steps, start)
            rounds.append(record)
            masks.append(mask)
            _save_round(folder, r, {"mask": mask.state(), "state": trained, "record": record}, fp, rounds)
            _report(on_round, record, progress, task)
    model.load_state_dict(trained)
    model.cpu().eval()
    if task is not None:
        progress.remove_task(task)
    return ImpResult(model, mask, rounds, resumed_from, fp, masks)


def _report(on_round: Callable | None, record: dict[str, Any], progress: Any, task: Any) -> None:
    if on_round is not None:
        on_round(record)
    if task is not None:
        progress.advance(task)


def _record(r: int, mask: Mask, ticket: float, reinit: float | None, random_masks: float | None, steps: int,
            start: float) -> dict[str, Any]:
    return {"round": r, "remaining": mask.remaining(), "nonzero": mask.nonzero(), "total": mask.total(),
            "ticket": ticket, "reinit": reinit, "random_masks": random_masks, "steps": steps,
            "seconds": round(time.perf_counter() - start, 3)}


def _round_path(folder: Path, r: int) -> Path:
    return folder / f"round-{r:03d}.pt"


def _save_round(folder: Path | None, r: int, ck: dict[str, Any], fp: str, rounds: list[dict[str, Any]]) -> None:
    """Writes round r's checkpoint atomically; the round counts as finished once its file exists."""
    import torch

    if folder is None:
        return
    if r == 0:
        # A fresh run: drop rounds of an earlier run with other settings before the new ones appear.
        for old in folder.glob("round-*.pt"):
            old.unlink()
        write_json(folder / "meta.json", {"fingerprint": fp, "version": CHECKPOINT_VERSION})
    payload = {**ck, "record": json.dumps(ck["record"])}
    with atomic_path(_round_path(folder, r)) as tmp:
        torch.save(payload, tmp)
    write_json(folder / "rounds.json", rounds)


def _load_rounds(folder: Path, fp: str, last: int) -> list[dict[str, Any]]:
    """Checkpoints of rounds 0..k of an earlier run with the same fingerprint (k: its last finished round, at most
    `last`)."""
    import torch

    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return []
    if meta.get("fingerprint") != fp:
        return []
    out = []
    r = 0
    while r <= last and _round_path(folder, r).is_file():
        try:
            ck = torch.load(_round_path(folder, r), map_location="cpu", weights_only=True)
            ck["record"] = json.loads(ck["record"])
        except Exception:  # an unreadable round is redone, never trusted
            break
        if out:
            out[-1].pop("state", None)  # only the rewind point and the last round's weights are needed
        out.append(ck)
        r += 1
    return out
