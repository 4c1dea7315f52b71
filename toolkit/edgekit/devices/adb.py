"""`adb://[SERIAL][?tool=apk]`: an Android phone, timed by TFLite's own benchmark_model (native binary or the
benchmark APK) over adb. The adb sequence and the output parser live in edgekit.measure.android.

THIS PATH HAS NOT RUN ON A PHONE (see edgekit.measure.android): it is tested on recorded adb sequences.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgekit.devices import BaseDevice, Job
from edgekit.errors import RuntimeUnavailable, SettingsError

if TYPE_CHECKING:
    import numpy as np

    from edgekit.measure.android import Adb
    from edgekit.report import Latency
    from edgekit.targets import Target


class AndroidDevice(BaseDevice):
    """One phone over adb.

    Args:
        uri: adb://[SERIAL][?tool=binary|apk].
        target: the target its timings must fit (needed: it picks the delegate).
        adb: an Adb to use (tests inject one with a recording runner).
    """

    scheme = "adb"

    def __init__(self, uri: str, target: Target | None = None, adb: Adb | None = None, **_: Any) -> None:
        from edgekit.measure.android import _tool

        super().__init__(target)
        parsed = urllib.parse.urlsplit(uri)
        self.serial = parsed.netloc or parsed.path.strip("/")
        self.tool = _tool(uri)
        self.uri = f"adb://{self.serial}"
        self._adb = adb

    @property
    def adb(self) -> Adb:
        if self._adb is None:
            from edgekit.measure.android import Adb

            self._adb = Adb(self.serial)
        return self._adb

    def _read_facts(self) -> dict[str, Any]:
        from edgekit.measure.android import device_facts_adb

        self.adb.check_online()
        return device_facts_adb(self.adb)

    def runtimes(self) -> tuple[str, ...]:
        return ("litert",)

    def time(self, artifacts: Sequence[Job], runs: int, *, warmup: int = 5, threads: int = 1,
             profile_runs: int = 0, progress: Any = None) -> list[Latency]:
        """Each .tflite file in benchmark_model (op profiling on: the phone's per-operator times); other formats
        get source "none"."""
        from edgekit.measure.android import profile_artifact_adb
        from edgekit.report import Latency

        if self.target is None:
            raise SettingsError(f"{self.uri}: an Android device needs the target it measures for")
        out = []
        for j in artifacts:
            if j.fmt != "tflite":
                out.append(Latency.none(f"benchmark_model runs .tflite files, not {j.fmt}",
                                        device=self.target.description, via=self.uri))
                continue
            p = profile_artifact_adb(j.path, self.target, self.serial, threads, runs, warmup, self.tool, self.adb)
            e, d = p["entries"][0], p["device"]
            self._facts = d
            out.append(Latency.measured(
                e["timing"], device=f"{d.get('manufacturer')} {d.get('model')} ({d.get('soc')}, Android "
                                    f"{d.get('android_version')}) via adb",
                runtime=e["runtime"], threads=e["threads"], device_id=p["device_id"], via=e["via"],
                percentiles=e["timing"]["percentiles"], conditions=e["conditions"], device_facts=d,
                raw={"profile": p}))
        return out

    def run(self, artifact: Job, inputs: np.ndarray) -> np.ndarray:
        raise RuntimeUnavailable(f"{self.uri}: benchmark_model times models but returns no outputs; the artifact "
                                 f"is verified on this machine")
