"""The prune stage with `structure: channel`: structured lottery tickets in a run folder (report sections,
record, the pruning history that rebuilds the thinner network on resume)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError
from edgekit.fileio import write_json

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.pipeline import RunContext

HISTORY_FILE = "channels.json"


def run_channel(model: nn.Module, settings: Any, ctx: RunContext) -> nn.Module:
    """Runs structured IMP (edgekit.prune.structured) and records it like the weights prune."""
    import torch

    from edgekit.prune import report as prune_report
    from edgekit.prune.structured import run_channel_imp

    data = ctx.data
    multiple = settings.channel_multiple or ctx.target.channel_multiple
    folder = ctx.out / "prune"
    example = torch.as_tensor(ctx.example_input)
    result = run_channel_imp(model, data.x_train, data.y_train, data.x_test, data.y_test, settings, example,
                             multiple, folder, progress=ctx.progress)
    ctx.masks = None  # the layers changed shape: no earlier pruning mask fits them
    history_path = write_json(folder / HISTORY_FILE, {"version": 1, "history": result.history,
                                                       "widths": result.widths, "groups": result.groups})
    rounds, last = result.rounds, result.rounds[-1]
    plot = prune_report.plot_rounds(folder / "lottery.png", rounds,
                                    f"{ctx.bundle.name}: channel groups, rewind to step {settings.rewind_step}, "
                                    f"multiples of {multiple}", prune_report.CHANNEL_LABELS)
    rel = plot.relative_to(ctx.out).as_posix()
    ctx.add_section("Structured lottery ticket: accuracy vs weights remaining",
                    prune_report.rounds_markdown(rounds, rel, channels=True) + "\n\n"
                    + _verdict(last, ctx.bundle.weights, settings.rewind_step))
    ctx.add_section("Structured lottery ticket: channel groups",
                    prune_report.groups_markdown(result.groups, result.widths, multiple))
    ctx.record(
        metrics={"accuracy": last["ticket"], "dense_accuracy": rounds[0]["ticket"],
                 "weights_remaining": last["remaining"], "channels_remaining": last["channels_remaining"],
                 **({"reinit_accuracy": last["reinit"]} if last["reinit"] is not None else {}),
                 **({"random_channels_accuracy": last["random_masks"]} if last["random_masks"] is not None else {})},
        details={"structure": "channel", "rounds": rounds, "channels": history_path.relative_to(ctx.out).as_posix(),
                 "widths": result.widths, "channel_multiple": multiple, "groups": result.groups,
                 "resumed_from_round": result.resumed_from, "plot": rel, "settings": asdict(settings),
                 "note": "accuracies are on the test split after each round's training; weights remaining counts "
                         "every parameter of the model; the result is a thinner dense network"})
    return result.model


def _verdict(last: dict[str, Any], weights: str, rewind_step: int) -> str:
    if last["reinit"] is None:
        return "The re-init control was off: whether the ticket beats the thin network trained from scratch is unknown."
    diff = 100 * (last["ticket"] - last["reinit"])
    word = "beats" if diff > 0 else "does not beat"
    text = (f"At {100 * last['remaining']:.1f}% of the weights the structured ticket {word} the same thin network "
            f"trained from a fresh initialisation ({100 * last['ticket']:.2f}% vs {100 * last['reinit']:.2f}%, "
            f"{diff:+.2f} points).")
    if rewind_step == 0 and not weights.startswith("initialisation"):
        text += (f" Note: round 0 started from the weights as loaded ({weights}), so the rewind point is a trained "
                 "network and the ticket inherits that training; a lottery-ticket comparison needs an untrained "
                 "initialisation (e.g. edgekit:digits_mlp, or a zoo model without --weights).")
    return text


def restore_channels(model: nn.Module, ctx: RunContext) -> nn.Module:
    """Replays the recorded pruning history on the loaded model (a resumed run reuses the finished stage)."""
    import torch

    from edgekit.prune.channels import replay

    rel = ctx.report["stages"][-1].details["channels"]
    try:
        history = json.loads((ctx.out / rel).read_text())["history"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{ctx.out / rel}: cannot read the channel-pruning record ({e}); rerun with --fresh") from None
    return replay(model, torch.as_tensor(ctx.example_input), history)
