"""What a device is and what it reports: the honesty check every device applies to its facts, the labels reports
use, and the harness's results turned into Latency records (local or over SSH).

Honesty: a timing is reported as "measured" for a target only when the device's facts fit the target (same
architecture; for the host target, the very machine edgekit runs on). A mismatch is an error, not a mislabelled number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.devices.uri import DeviceURI
from edgekit.errors import SettingsError

if TYPE_CHECKING:
    from edgekit.report import Latency
    from edgekit.targets import Target

# The self-contained timing script a device runs (copied there with the runtime loaders it imports).
HARNESS = Path(__file__).with_name("harness.py")
PORTABLE = Path(__file__).resolve().parents[1] / "runtimes" / "_portable.py"
PORTABLE_NAME = "edgekit_portable.py"  # its name beside the harness on a device
HARNESS_RUNTIMES = ("litert", "onnxruntime", "executorch")
# what the harness runs a file with
SUFFIX_RUNTIMES = {".tflite": "litert", ".onnx": "onnxruntime", ".pte": "executorch"}


def check_device_fits_target(facts: dict[str, Any], target: Target, uri: DeviceURI | str) -> None:
    """Refuses to call a timing "measured" for a target the device is not.

    The host target's device is this machine: a remote device must be this machine (loopback). Other targets need
    the same architecture; an emulated device never counts.

    Args:
        facts: the device's facts, as they came back with the timing.
        target: the target the timing would describe.
        uri: the device (its display form names it in the error).
    """
    from edgekit.targets import host_facts

    uri = DeviceURI("?", uri) if isinstance(uri, str) else uri

    if facts.get("emulated"):
        raise SettingsError(f"device {uri.display} is an emulator ({facts.get('cpu')}): emulated timings are "
                            f"never device latencies")
    if target.is_host:
        here = host_facts()
        same = (facts.get("hostname") == here["hostname"] and facts.get("arch") == here["arch"]
                and facts.get("cpu") == here["cpu"])
        if not same:
            raise SettingsError(f"device {uri.display} ({facts.get('hostname')}, {facts.get('cpu')}) is not this "
                                f"machine, and the host target's device is this machine: pick the target that "
                                f"describes that device (`edgekit targets`)")
        return
    if facts.get("arch") != target.arch:
        raise SettingsError(f"device {uri.display} is {facts.get('arch')} ({facts.get('cpu')}) but target "
                            f"{target.name} is {target.arch} ({target.cpu}): its timings would not be "
                            f"{target.name} latencies")


def device_label(facts: dict[str, Any], uri: DeviceURI | str) -> str:
    """'raspberrypi: Raspberry Pi 4 Model B Rev 1.4 (4 cores, aarch64) via ssh://pi@raspberrypi:22'."""
    model = facts.get("model") or facts.get("cpu")
    via = uri if isinstance(uri, str) else uri.display
    return f"{facts.get('hostname')}: {model} ({facts.get('cores')} cores, {facts.get('arch')}) via {via}"


def host_device_name() -> str:
    from edgekit.targets import host_facts

    f = host_facts()
    return f"host: {f['cpu']} ({f['cores']} cores, {f['arch']})"


def decode_per_op(res: dict[str, Any], artifact: Path) -> None:
    """ExecuTorch harness results carry the raw ETDump (the device needs no devtools): decode it into per_op."""
    if res.get("etdump_b64"):
        from edgekit.runtimes.executorch import per_op_from_harness

        prof = per_op_from_harness(res, artifact)
        res["per_op"], res["per_op_profile"] = prof["per_op"], {k: v for k, v in prof.items() if k != "per_op"}


def harness_latency(res: dict[str, Any], via: str, threads: int, artifact: Path | None = None) -> Latency:
    """A measured Latency from one harness result (local or over SSH); the whole result stays in extra["raw"]
    (per-operator times, sha256) for profiles, and is dropped from report.json by whoever records it. An ExecuTorch
    result's raw ETDump is decoded here onto the program's layers (the device needs no devtools); those per-operator
    fields go into the latency record itself."""
    from edgekit.latency.profile import device_id_from_facts
    from edgekit.report import Latency

    if artifact is not None:
        decode_per_op(res, artifact)
    facts = res["device"]
    label = device_label(facts, via) if via != "local" else host_device_name()
    lat = Latency.measured(res["timing"], device=label, runtime=res["runtime"], threads=threads, via=via,
                           device_id=device_id_from_facts(facts, via), device_facts=facts,
                           conditions=res["conditions"], raw=res)
    if res.get("per_op_profile"):
        from edgekit.latency.op_profile import per_op_fields

        lat.extra.update(per_op_fields({"per_op": res["per_op"], **res["per_op_profile"]}))
    return lat


def parse_harness_json(line: str) -> dict | None:
    """The harness's one-line JSON result, or None for anything else."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
