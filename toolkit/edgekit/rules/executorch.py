"""ExecuTorch's XNNPACK delegate (`sparse_rules = "executorch"`): which operators the XNNPACK partitioner takes, and
why it leaves the others to ExecuTorch's portable kernels.

The rules are executorch's own: the partitioner configs (`ALL_PARTITIONER_CONFIGS`, one per operator it can lower,
each with its constraints) decide, and their `WhyNoPartition` log says why a node stayed out. `edgekit check` runs the
partitioner on the model (no serialisation) and reports per operator: delegated or not, and the reason.
Sparse inference: the `.pte` export lowers weights densely (no sparse path is requested from XNNPACK), so pruned
zeros are multiplied like any weight.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from edgekit.rules import RuntimeVerdict
    from edgekit.targets import RuntimeSpec, Target

RUNTIME_NAME = "ExecuTorch (XNNPACK delegate)"
SPARSE_REASON = ("edgekit's .pte export lowers weights densely to XNNPACK (no sparse-inference path): pruned zeros "
                 "are multiplied like any weight")
_WHY_LOGGER = "executorch.backends.xnnpack.partition"  # the configs' loggers are its children


def reason(runtime_name: str) -> str:
    return SPARSE_REASON


def supported_ops() -> list[str]:
    """The operators XNNPACK's partitioner has a config for (executorch's own list, e.g. 'convolution.default')."""
    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    return sorted({c.target_name for c in ALL_PARTITIONER_CONFIGS if getattr(c, "target_name", None)})


class _Why(logging.Handler):
    """Collects the partitioner's WhyNoPartition messages: node name -> reason."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        why = record.msg
        node, text = getattr(why, "node", None), getattr(why, "reason", "")
        if node is not None:
            self.reasons.setdefault(str(node), str(text))


def delegation_report(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Runs torch.export and the XNNPACK partitioner: the export's delegation record plus reasons per fallback."""
    import torch

    from edgekit.runtimes._exir import quiet_imports

    quiet_imports()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgekit.errors import EdgekitError, first_line
    from edgekit.export._pte_lower import delegation, quiet

    handler = _Why()
    log = logging.getLogger(_WHY_LOGGER)
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # collected here, not printed
    try:
        with quiet(), torch.no_grad():
            ep = torch.export.export(model.eval(), (torch.zeros(input_shape),))
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    except Exception as e:
        raise EdgekitError(f"ExecuTorch check: export failed: {first_line(e)}") from None
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate
    gm = edge.exported_program().graph_module
    info = delegation(gm)
    names = [n.name for n in gm.graph.nodes if n.op == "call_function"]
    info["reasons"] = {n: handler.reasons[n] for n in names if n in handler.reasons}
    return info


def model_verdict(model: nn.Module, input_shape: tuple[int, ...], target: Target, rt: RuntimeSpec
                  ) -> RuntimeVerdict:
    """Per operator: delegated to XNNPACK or left to the portable kernels, and why."""
    from edgekit.rules import LayerVerdict, RuntimeVerdict

    info = delegation_report(model, input_shape)
    supported = set(supported_ops())
    reasons = info.get("reasons", {})
    layers, blockers = [], []
    for i, op in enumerate(info["ops"]):
        name = op["layer"] or op["op"]
        if op["delegated"]:
            why = "delegated to XNNPACK"
        elif op["node"] in reasons:
            why = f"XNNPACK declined it: {reasons[op['node']]}"
        elif op["op"].removeprefix("aten.") not in supported:
            why = f"no XNNPACK partitioner config for {op['op']}"
        else:
            why = "XNNPACK declined it (its constraints were not met)"
        if not op["delegated"]:
            blockers.append({"layer": name, "why": f"{op['op']} runs on a portable kernel: {why}"})
        int8 = bool(rt.int8 and op["delegated"])
        layers.append(LayerVerdict(i, name, op["op"], False, SPARSE_REASON, int8,
                                   "INT8 kernel in XNNPACK" if int8 else why, delegated=op["delegated"],
                                   delegate_reason=why))
    total = info["delegated_nodes"] + info["portable_nodes"]
    summary = (f"XNNPACK delegates {info['delegated_nodes']} of {total} operators "
               f"({100 * info['delegated_fraction']:.1f}%) in {info['delegated_subgraphs']} subgraph(s)"
               + (f"; portable kernels run {', '.join(f'{k} x{v}' for k, v in info['portable_ops'].items())}"
                  if info["portable_ops"] else "; nothing falls back to portable kernels")
               + f"; dense ({SPARSE_REASON})")
    return RuntimeVerdict(rt.name, rt.format, rt.sparse_rules, False, False, None, blockers, summary, layers)
