"""Mask patterns: which groups of weights are pruned together, and how they are ranked by magnitude.

Every pattern works on the weight viewed as a matrix (output channels, everything else), the layout sparse kernels
use for 1x1 convolutions and fully-connected layers:

    unstructured   single weights
    1x4            1 output channel x 4 consecutive inputs (blocks are kept or pruned whole)
    4x1            4 output channels x 1 input
    N:M            e.g. 2:4: in every group of M consecutive inputs, at most N survive at the end

Pruning only ever ranks weights that are still alive, so a new mask is always within the previous one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekit.errors import SettingsError

if TYPE_CHECKING:
    import torch

_NM = re.compile(r"^(\d+):(\d+)$")
BLOCKS = {"1x4": (1, 4), "4x1": (4, 1)}


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern name."""

    kind: str  # "unstructured", "block", "nm"
    block: tuple[int, int] = (1, 1)
    n: int = 0
    m: int = 0

    @property
    def name(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.block[0]}x{self.block[1]}"
        return "unstructured"

    def fits(self, shape: tuple[int, ...]) -> str | None:
        """None when a weight of this shape can take the pattern, else why not."""
        if self.kind != "nm":
            return None
        cols = math.prod(shape[1:])
        if cols % self.m:
            return f"{cols} inputs per output channel is not a multiple of M={self.m}"
        return None


def parse_pattern(text: str) -> Pattern:
    """'unstructured', '1x4', '4x1' or 'N:M' (0 < N < M)."""
    if text == "unstructured":
        return Pattern("unstructured")
    if text in BLOCKS:
        return Pattern("block", block=BLOCKS[text])
    m = _NM.match(text)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise SettingsError(f"pattern '{text}': N:M needs 0 < N < M")
        return Pattern("nm", n=n, m=mm)
    raise SettingsError(f"unknown pattern '{text}'; use unstructured, 1x4, 4x1 or N:M such as 2:4")


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)


def unit_scores(weight: torch.Tensor, alive: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (mean |w| per unit) and aliveness of the pattern's units, both 1-D; units are single weights or blocks.

    Args:
        weight: the layer's weight (any device); alive: its current bool mask (CPU).
        pattern: unstructured or block (N:M is handled by `prune_nm`).
    """
    import torch
    import torch.nn.functional as F

    w = _as_matrix(weight.detach().abs().float().cpu())
    a = _as_matrix(alive).float()
    if pattern.kind == "unstructured":
        return w.flatten(), a.flatten() > 0
    bh, bw = pattern.block
    rows, cols = w.shape
    pad = (0, (-cols) % bw, 0, (-rows) % bh)
    # Mean over the block's real weights: padding counts as neither weight nor alive.
    wp = F.pad(w * a, pad)[None, None]
    ap = F.pad(a, pad)[None, None]
    ones = F.pad(torch.ones_like(a), pad)[None, None]
    score = F.avg_pool2d(wp, (bh, bw)) / F.avg_pool2d(ones, (bh, bw)).clamp_min(1e-12)
    alive_blocks = F.max_pool2d(ap, (bh, bw)) > 0
    return score.flatten(), alive_blocks.flatten()


def expand_units(keep: torch.Tensor, alive: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Unit keep-flags (1-D) back to a bool mask shaped like `alive`, never reviving a pruned weight."""
    if pattern.kind == "unstructured":
        return keep.reshape(alive.shape) & alive
    bh, bw = pattern.block
    a = _as_matrix(alive)
    rows, cols = a.shape
    grid = keep.reshape(-(-rows // bh), -(-cols // bw))
    full = grid.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:rows, :cols]
    return full.reshape(alive.shape) & alive


def lowest_alive(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-flags after removing the k lowest-scoring alive units (ties broken by position, so runs repeat)."""
    import torch

    keep = alive.clone()
    if k <= 0:
        return keep
    idx = torch.nonzero(alive).flatten()
    order = torch.argsort(scores[idx], stable=True)
    keep[idx[order[:k]]] = False
    return keep


def prune_nm(weight: torch.Tensor, alive: torch.Tensor, pattern: Pattern, rate: float) -> torch.Tensor:
    """One N:M round: each group of M inputs keeps round(kept * (1 - rate)) weights, never fewer than N.

    Groups move together (all start with M alive), so after enough rounds every group holds exactly N.
    """
    import torch

    w = _as_matrix(weight.detach().abs().float().cpu())
    a = _as_matrix(alive)
    groups_w = w.reshape(-1, pattern.m)
    groups_a = a.reshape(-1, pattern.m)
    kept_now = int(groups_a.sum(1).max()) if groups_a.numel() else 0
    target = max(pattern.n, min(kept_now - 1, round(kept_now * (1 - rate))))
    if kept_now <= pattern.n or target >= kept_now:
        return alive.clone()
    scores = torch.where(groups_a, groups_w, torch.full_like(groups_w, -1.0))
    # argsort descending with stable ties: the `target` largest alive weights of each group stay.
    order = torch.argsort(-scores, dim=1, stable=True)
    keep = torch.zeros_like(groups_a)
    keep.scatter_(1, order[:, :target], True)
    return (keep & groups_a).reshape(alive.shape)
