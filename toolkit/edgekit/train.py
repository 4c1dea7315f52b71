"""Train and evaluate loops shared by the stages that train (prune, adapt, decompose)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 10, lr: float = 1e-3,
        batch_size: int = 64, seed: int = 0, optimizer: str = "adam", weight_decay: float = 0.0,
        schedule: str = "none", device: str = "cpu", params: Any = None,
        after_step: Callable[[nn.Module, int], None] | None = None, progress: Any = None,
        description: str = "training", probabilities: bool = False, teacher: np.ndarray | None = None,
        teacher_weight: float = 0.5) -> int:
    """Supervised training with cross-entropy; returns the number of optimiser steps taken.

    Args:
        model: trained in place.
        x, y: inputs (N, ...) float32 and integer labels.
        epochs, lr, batch_size, seed: the usual; the data order depends only on seed.
        optimizer: "adam" or "sgd" (momentum 0.9).
        schedule: "none" or "cosine" learning-rate decay over all steps.
        params: parameters to optimise (default: all with requires_grad).
        after_step: called after every optimiser step with (model, step), e.g. to re-apply pruning masks.
        progress: a rich Progress; a task is added when given.
        probabilities: the model ends in a softmax (e.g. an imported deployment graph): the loss is the negative
            log-likelihood of its outputs instead of cross-entropy on logits.
        teacher: class probabilities of a teacher model for every row of x (knowledge distillation): the loss adds
            teacher_weight x KL(teacher || model) to (1 - teacher_weight) x the label loss.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    xt = torch.as_tensor(x)
    yt = torch.as_tensor(y)
    tt = None if teacher is None else torch.as_tensor(teacher, dtype=torch.float32).reshape(len(x), -1)
    n = len(xt)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1)) if schedule == "cosine" else None
    task = progress.add_task(description, total=epochs) if progress is not None else None
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            if probabilities or tt is not None:
                log_p = torch.log(out.clamp_min(1e-12)) if probabilities else F.log_softmax(out, dim=1)
                loss = F.nll_loss(log_p, yb)
                if tt is not None:
                    kl = F.kl_div(log_p, tt[idx].to(device), reduction="batchmean")
                    loss = (1 - teacher_weight) * loss + teacher_weight * kl
            else:
                loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            if after_step is not None:
                after_step(model, step)
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    model.eval()
    return step


def outputs_are_probabilities(model: nn.Module, x: np.ndarray) -> bool:
    """Whether the model's outputs on `x` are probability rows (non-negative, summing to 1): a graph exported for
    deployment often ends in a softmax, and training it needs the log-likelihood, not cross-entropy on logits."""
    out = predict(model, x[:8]).reshape(min(len(x), 8), -1)
    return bool(out.shape[1] > 1 and (out >= 0).all() and np.allclose(out.sum(1), 1.0, atol=1e-4))


def predict(model: nn.Module | Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for x, as float32 numpy; `model` is a torch module or any callable on numpy batches."""
    import torch

    outs = []
    batch_size = batch_for(x, batch_size)
    if isinstance(model, torch.nn.Module):
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out = model(torch.as_tensor(x[i:i + batch_size]).to(device))
                outs.append(_as_tensor(out).float().cpu().numpy())
    else:
        for i in range(0, len(x), batch_size):
            outs.append(np.asarray(model(x[i:i + batch_size]), np.float32))
    return np.concatenate(outs)


def batch_for(x: Any, batch_size: int, mb: float = 32.0) -> int:
    """Rows per forward pass: `batch_size`, fewer for big inputs (a model's activations are many times its input:
    64 pages of 736x992 in one pass take gigabytes)."""
    per_row = x[:1].nbytes if len(x) else 1
    return max(1, min(batch_size, int(mb * 2 ** 20 // max(per_row, 1))))


def predict_outputs(model: Any, x: Any, batch_size: int = 256) -> list[np.ndarray]:
    """Every output of the model for x, as float32 numpy arrays (one per output, rows first). `model` is a torch
    module or a model file's runner with `outputs(x)` (importers.native.NativeModel)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return model.outputs(x)
    batch_size = batch_for(x, batch_size)
    per_batch = []
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = model(torch.as_tensor(x[i:i + batch_size]).to(device))
            per_batch.append([t.float().cpu().numpy() for t in flat_outputs(out)])
    return [np.concatenate([b[k] for b in per_batch]) for k in range(len(per_batch[0]))]


def flat_outputs(out: Any) -> list[Any]:
    """A model's outputs in order: a tensor, or (nested) tuples, lists and dicts of them."""
    if isinstance(out, dict):
        return [t for v in out.values() for t in flat_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flat_outputs(v)]
    return [out]


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.reshape(len(y), -1).argmax(1) == y).mean())


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return float((a.argmax(1) == b.argmax(1)).mean())


def paired_drop_se(reference_ok: np.ndarray, candidate_ok: np.ndarray) -> float:
    """Standard error, in points, of the difference of two accuracies measured on the same inputs (per-input
    correctness of each): from the inputs on which they disagree, so a candidate that fails and fixes the same few
    inputs as the reference has a small error, one that trades many for many a large one."""
    a, b = np.asarray(reference_ok, bool), np.asarray(candidate_ok, bool)
    n = len(a)
    if n == 0:
        return 0.0
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    return 100.0 * float(np.sqrt(max(lost + gained - (lost - gained) ** 2 / n, 0.0))) / n


def logits_drop_se(logits: np.ndarray, reference_logits: np.ndarray, y: np.ndarray | None) -> float:
    """Standard error (points) of a candidate's quality drop against a reference scored on the same inputs: paired
    accuracy with labels; without, that of the top-1 disagreement rate with the reference."""
    n = len(logits)
    top, ref = logits.reshape(n, -1).argmax(1), reference_logits[:n].reshape(n, -1).argmax(1)
    if y is None:
        return paired_drop_se(np.ones(n, bool), top == ref)
    return paired_drop_se(ref == y[:n], top == y[:n])


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio of `other` against `reference`, in dB."""
    noise = float(np.mean((reference.astype(np.float64) - other) ** 2))
    signal = float(np.mean(reference.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def quality(logits: np.ndarray, y: np.ndarray | None, reference_logits: np.ndarray | None = None) -> dict[str, float]:
    """Task accuracy when labels exist, else top-1 agreement (and SQNR) with the reference model's logits."""
    if y is not None:
        out = {"accuracy": accuracy(logits, y)}
        if reference_logits is not None:
            out["agreement"] = top1_agreement(logits, reference_logits)
        return out
    if reference_logits is None:
        return {"agreement": 1.0}
    return {"agreement": top1_agreement(logits, reference_logits), "sqnr_db": sqnr_db(reference_logits, logits)}
