"""`edgekit check MODEL --target T`: will it be faster? Per layer, whether the target's runtimes run it sparse and/or
in INT8, and if not, why; then one whole-model verdict per runtime (rules: edgekit.rules)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edgekit.commands._options import MODEL_HELP, TrustCode


def register(app: typer.Typer) -> None:
    app.command(name="check")(check)


def check(
    model: Annotated[str | None, typer.Argument(help=MODEL_HELP)] = None,
    target: Annotated[str, typer.Option(help="target name (see `edgekit targets`)")] = "host",
    weights: Annotated[str | None, typer.Option(help="state-dict file (loaded with weights_only=True)")] = None,
    input_shape: Annotated[str | None, typer.Option(help="N,C,H,W, e.g. 1,3,224,224")] = None,
    sparsity: Annotated[float, typer.Option(help="judge the model as if its eligible 1x1 convolutions were pruned "
                                                 "one-shot to this fraction of zeros (0: as it is)")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the verdicts as JSON")] = False,
    all_layers: Annotated[bool, typer.Option("--all", help="list every layer (default: those that matter)")] = False,
    trust_model_code: TrustCode = False,
) -> None:
    """Will it be faster? Which layers the target's runtimes run sparse / INT8, and what blocks the rest."""
    from rich.console import Console
    from rich.table import Table

    from edgekit import api, rules
    from edgekit.errors import SettingsError
    from edgekit.stages.sparsify import candidate_convs, magnitude_prune

    if not 0 <= sparsity < 1:
        raise SettingsError(f"--sparsity must be in [0, 1), got {sparsity}")
    tgt = api.load_target(target)
    bundle = api.load_model(model, weights, api.parse_shape(input_shape), trust_code=trust_model_code)
    if sparsity > 0:
        magnitude_prune(candidate_convs(bundle.module), sparsity)
    verdicts = rules.check_model(bundle.module.eval(), tgt, tuple(bundle.input_shape))
    if as_json:
        typer.echo(json.dumps({"model": bundle.name, "target": tgt.name, "assumed_sparsity": sparsity,
                               "runtimes": [v.as_dict() for v in verdicts]}, indent=1))
        return
    console = Console()
    for v in verdicts:
        console.print(f"[bold]{v.runtime}[/bold] ({v.format}, rules {v.rules}): {v.summary}")
        for b in v.blockers:
            console.print(f"  - {b['layer']}: {b['why']}")
    main = next((v for v in verdicts if v.rules != "none"), None)
    if main is None:
        return
    table = Table(title=f"{bundle.name} on {tgt.name}: {main.runtime}")
    for col in ("#", "layer", "op", "zeros", "sparse", "why", "INT8"):
        table.add_column(col, overflow="fold")
    blocked = {b["layer"] for b in main.blockers}
    for lv in main.layers:
        interesting = lv.sparse or lv.name in blocked or lv.sparse_reason.startswith(("blocks", "1x1"))
        if not (all_layers or interesting):
            continue
        z = "–" if lv.zero_fraction is None else f"{100 * lv.zero_fraction:.0f}%"
        table.add_row(str(lv.index), lv.name, lv.op, z, "yes" if lv.sparse else "no", lv.sparse_reason,
                      "yes" if lv.int8 else f"no: {lv.int8_reason}")
    console.print(table)
