"""The search core both searches share (the INT8 policy search, edgekit.quant, and the joint pruning + INT8 search,
edgekit.joint): the constraints with their standard-error margin, the Pareto front, and the choice.

A candidate is anything with `label`, `drop` (points), `drop_se`, `p50_ms` (None when unknown), `size_bytes`,
`size_mb` and, optionally, `status` ("evaluated"; anything else, e.g. a joint candidate screened out on its
latency estimate, is never chosen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from edgekit.errors import SettingsError

C = TypeVar("C")


@dataclass(frozen=True)
class Constraints:
    max_quality_drop: float | None = None  # points
    latency_budget_ms: float | None = None
    max_size_mb: float | None = None
    # The quality constraint holds for the drop plus this many paired standard errors (`drop_se`): on a few hundred
    # scoring inputs a candidate's drop carries a point or two of noise, and the fastest candidate that looks
    # feasible is the one most likely to have been lucky.
    confidence: float = 0.0

    def violations(self, c: Any) -> list[float]:
        """Optuna convention: <= 0 means satisfied."""
        bound = c.drop + self.confidence * c.drop_se
        out = [bound - self.max_quality_drop if self.max_quality_drop is not None else -1.0]
        if self.latency_budget_ms is not None:
            out.append(c.p50_ms - self.latency_budget_ms if c.p50_ms is not None else 1.0)
        else:
            out.append(-1.0)
        out.append(c.size_mb - self.max_size_mb if self.max_size_mb is not None else -1.0)
        return out

    def met(self, c: Any) -> bool:
        return all(v <= 0 for v in self.violations(c))

    def margin_note(self, c: Any) -> str:
        """What the choice's reason says about the margin ('' without one)."""
        if not self.confidence or self.max_quality_drop is None:
            return ""
        z = self.confidence
        return (f"; a candidate is feasible when its drop plus {z:g} standard error{'s' * (z != 1)} is within "
                f"{self.max_quality_drop:g} pts (this one: {c.drop:.2f} ± {c.drop_se:.2f})")


def pareto_front(cands: Sequence[C]) -> list[C]:
    """Non-dominated candidates on (drop, p50, size); p50 counts as 0 where a candidate has none."""
    def objs(c: Any) -> tuple[float, ...]:
        return (c.drop, c.p50_ms if c.p50_ms is not None else 0.0, c.size_bytes)

    front = []
    for c in cands:
        o = objs(c)
        if not any(all(a <= b for a, b in zip(objs(d), o, strict=True)) and objs(d) != o for d in cands):
            front.append(c)
    return sorted(front, key=lambda c: (c.p50_ms or 0.0, c.drop))


def choose(cands: Sequence[C], constraints: Constraints, latency_slack: float = 0.10) -> tuple[C, str, bool]:
    """The chosen candidate and why: among feasible ones, the lowest quality drop within `latency_slack` of the fastest
    (of the smallest size where no feasible candidate has a latency); without a feasible one, the candidate closest
    to the constraints. Returns (candidate, reason, constraints_met)."""
    best, why, met = _choose(cands, constraints, latency_slack)
    return best, why + constraints.margin_note(best), met


def _choose(cands: Sequence[Any], constraints: Constraints, slack: float) -> tuple[Any, str, bool]:
    done = [c for c in cands if getattr(c, "status", "evaluated") == "evaluated"]
    if not done:
        raise SettingsError("search: no candidate was evaluated")
    feasible = [c for c in done if constraints.met(c)]
    if not feasible:
        best = min(done, key=lambda c: sum(max(v, 0.0) for v in constraints.violations(c)))
        return best, (f"no candidate meets the constraints; chose the one closest to them ({best.label}: quality "
                      f"drop {best.drop:.2f} pts, p50 {_ms(best.p50_ms)}, {best.size_mb:.3f} MB)"), False
    timed = [c for c in feasible if c.p50_ms is not None]
    if timed:
        fastest = min(timed, key=lambda c: c.p50_ms)
        near = [c for c in timed if c.p50_ms <= fastest.p50_ms * (1 + slack)]
        best = min(near, key=lambda c: (round(c.drop, 6), c.p50_ms, c.size_bytes))
        return best, (f"fastest feasible candidate: {_ms(fastest.p50_ms)} ({fastest.label}); among the "
                      f"{len(near)} feasible candidates within {slack:.0%} of it, this one has the lowest quality "
                      f"drop ({best.drop:.2f} pts)"), True
    smallest = min(feasible, key=lambda c: c.size_bytes)
    near = [c for c in feasible if c.size_bytes <= smallest.size_bytes * (1 + slack)]
    best = min(near, key=lambda c: (round(c.drop, 6), c.size_bytes))
    return best, (f"latency unavailable for this target (no device, no profile): chose the lowest quality drop "
                  f"({best.drop:.2f} pts) within {slack:.0%} of the smallest feasible size"), True


def _ms(v: float | None) -> str:
    return "latency n/a" if v is None else f"{v:.4g} ms"
