"""The stage contract: what each stage needs and what it changes, declared as data on its module, and the recipe
check that runs before any stage does.

A stage module declares `CONTRACT = Contract(...)`, or `contract(settings) -> Contract` when it depends on a setting
(sparsify changes weights only with oneshot_sparsity > 0; decompose keeps pruning masks unless masks=drop).

The pipeline uses the contract to
- refuse an order that cannot work, in one line naming the two stages and the order that works;
- keep an earlier stage's work where the later stage can (pruning masks survive a stage with keeps_masks);
- invalidate: artifacts made before a stage that changes the model are moved to superseded/ (stale="supersede") or
  the order is refused up front (stale="refuse", e.g. an INT8 policy searched for weights that a later stage changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import SettingsError

NEEDS = ("torch", "labels", "artifacts", "verified")
CHANGES = ("weights", "masks", "structure", "artifacts")
MODEL_CHANGES = frozenset({"weights", "masks", "structure"})


@dataclass(frozen=True)
class Contract:
    """What a stage needs and changes.

    Attributes:
        needs: "torch" (a torch model), "labels" (labelled data), "artifacts" (files from an earlier stage),
            "verified" (artifacts checked by verify).
        changes: "weights", "masks" (pruning masks), "structure" (layers replaced), "artifacts" (writes files).
        keeps_masks: when it changes weights, the pruning masks of earlier stages survive (re-applied, or carried
            onto the layers that replace the pruned ones). False: it may fill pruned weights, so it cannot follow a
            stage that made masks.
        masks_note: why it cannot keep masks, for the error.
        stale: what a later model change does to this stage's artifacts: "supersede" (they are moved to
            superseded/ and said so) or "refuse" (the order is an error: the stage's work is for the model it saw).
        stale_note: why, for the error.
        outputs: paths under the run folder that the stage owns (removed when a recipe no longer has the stage).
        labels_note: added to the error when labels are missing.
        verifies: the stage checks artifacts (what "verified" needs).
    """

    needs: frozenset[str] = frozenset()
    changes: frozenset[str] = frozenset()
    keeps_masks: bool = True
    masks_note: str = ""
    stale: str = "supersede"
    stale_note: str = ""
    outputs: tuple[str, ...] = ()
    labels_note: str = ""
    verifies: bool = False

    def __post_init__(self) -> None:
        bad = (set(self.needs) - set(NEEDS)) | (set(self.changes) - set(CHANGES))
        if bad or self.stale not in ("supersede", "refuse"):
            raise ValueError(f"invalid contract: {sorted(bad) or self.stale}")

    @property
    def changes_model(self) -> bool:
        return bool(self.changes & MODEL_CHANGES)

    @property
    def writes_artifacts(self) -> bool:
        return "artifacts" in self.changes


# A stage module without a contract is treated as changing the model and not keeping masks (the safe reading).
UNDECLARED = Contract(changes=frozenset({"weights", "structure"}), keeps_masks=False,
                      masks_note="it declares no contract")


def contract_of(module: Any, settings: Any) -> Contract:
    """The contract of a stage module for these settings."""
    fn = getattr(module, "contract", None)
    if callable(fn):
        return fn(settings)
    declared = getattr(module, "CONTRACT", None)
    if declared is not None:
        return declared
    if getattr(module, "CHANGES_MODEL", True) is False:
        return Contract()
    return UNDECLARED


@dataclass
class _Seen:
    masks: tuple[int, str] | None = None  # the last stage that made pruning masks
    writers: list[tuple[int, str, Contract]] = field(default_factory=list)  # artifact writers since the last change
    verify: tuple[int, str] | None = None


def check_order(stages: Sequence[tuple[str, Contract]]) -> None:
    """Raises a one-line SettingsError for an order that cannot work.

    Args:
        stages: (stage name, contract) in recipe order.
    """
    seen = _Seen()
    for i, (name, c) in enumerate(stages):
        where = f"{name} (stage {i + 1})"
        if "artifacts" in c.needs and not any(cc.writes_artifacts for _, cc in stages[:i]):
            raise SettingsError(f"recipe order: {where} needs artifacts but no stage before it writes any; the order "
                                f"that works: export before {name}")
        if "verified" in c.needs and seen.verify is None:
            raise SettingsError(f"recipe order: {where} times verified artifacts but no verify stage comes before it; "
                                f"the order that works: export, verify, {name}")
        if c.changes_model:
            _check_model_change(i, name, c, seen)
        if c.writes_artifacts and seen.verify is not None and not any(cc.verifies for _, cc in stages[i + 1:]):
            raise SettingsError(f"recipe order: {where} writes artifacts after {seen.verify[1]} (stage "
                                f"{seen.verify[0] + 1}), so they would go unverified; the order that works: {name} "
                                f"before verify")
        if c.writes_artifacts:
            seen.writers.append((i, name, c))
        if c.verifies:
            seen.verify = (i, name)


def _check_model_change(i: int, name: str, c: Contract, seen: _Seen) -> None:
    where = f"{name} (stage {i + 1})"
    for j, other, oc in seen.writers:
        if oc.stale == "refuse":
            raise SettingsError(f"recipe order: {where} changes the model after {other} (stage {j + 1}), "
                                f"{oc.stale_note or 'whose artifacts it would make stale'}; the order that works: "
                                f"{name} before {other}")
    if seen.masks is not None and not c.keeps_masks:
        j, other = seen.masks
        raise SettingsError(f"recipe order: {where} after {other} (stage {j + 1}) would lose the pruning masks "
                            f"({c.masks_note or 'it does not keep them'}); the order that works: {name} before "
                            f"{other}")
    if "masks" in c.changes:
        seen.masks = (i, name)
    seen.verify = None  # artifacts verified before this change are stale; verify must come again


def check_facts(stages: Sequence[tuple[str, Contract]], *, labelled: bool, torch_model: bool = True,
                data_name: str = "") -> None:
    """Raises a one-line error when the data or model cannot give a stage what it needs."""
    for i, (name, c) in enumerate(stages):
        if "labels" in c.needs and not labelled:
            raise SettingsError(f"{name} (stage {i + 1}) trains the model and needs labelled data; "
                                f"'{data_name or 'the data'}' has none (pass --data digits, an image folder or an "
                                f".npz with x and y{c.labels_note})")
        if "torch" in c.needs and not torch_model:
            raise SettingsError(f"{name} (stage {i + 1}) needs a torch model, and this model could not be converted "
                                "to torch; use a recipe without it (e.g. --recipe auto)")


def superseded_reason(producer: str, by: str) -> str:
    return f"made by {producer} before {by} changed the model; put {producer} after {by} to get it for the final model"
