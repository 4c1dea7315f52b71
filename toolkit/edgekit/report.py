"""The run's records: typed `Latency`, `Verification`, `Artifact`, `ChainPoint`, `StageResult`, and report.json
(the contract other tools and CI read), written from them.

report.json fields are only added, never removed or renamed, without bumping SCHEMA. Schema 1 (before the stage
contract) is still read by `edgekit report` and its gates; a schema-1 run folder is not resumed.
Markdown and plots live in report_md.py.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError
from edgekit.fileio import write_json
from edgekit.version import __version__

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
LATENCY_SOURCES = ("measured", "predicted", "none")


class _Record:
    """JSON form of a record: None fields are left out; `extra`/`meta` merge into the top level."""

    _MERGED = ("extra", "meta")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name in self._MERGED:
                out.update(v or {})
            elif v is not None:
                out[f.name] = _plain(v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        known = {k: v for k, v in d.items() if k in names and k not in cls._MERGED}
        rest = {k: v for k, v in d.items() if k not in names}
        merged = next((m for m in cls._MERGED if m in names), None)
        if merged:
            known[merged] = rest
        return cls(**known)

    def __getitem__(self, key: str) -> Any:
        """Read access by report.json key, for scripts written against the dict records."""
        d = self.as_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_dict().get(key, default)


def _plain(v: Any) -> Any:
    if isinstance(v, _Record):
        return v.as_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass
class Latency(_Record):
    """Where a latency comes from and what it is. `source` is "measured" only on the device it describes.

    Provenance fields (device_id, via, engine, device_facts, conditions, profile, error_*) say which device and
    tool produced it; a predicted latency carries the predictor's error.
    """

    source: str = "none"
    device: str | None = None
    runtime: str | None = None
    threads: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    runs: int | None = None
    reason: str | None = None
    device_id: str | None = None
    via: str | None = None
    engine: str | None = None
    device_facts: dict[str, Any] | None = None
    conditions: dict[str, Any] | None = None
    profile: list[str] | None = None
    error_pct: float | None = None
    error_basis: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in LATENCY_SOURCES:
            raise ValueError(f"latency source must be one of {LATENCY_SOURCES}, got {self.source!r}")
        if self.source != "none" and self.p50_ms is None:
            raise ValueError(f"a {self.source} latency needs p50_ms")

    @classmethod
    def measured(cls, timing: Any, *, device: str, runtime: str, threads: int, **provenance: Any) -> Latency:
        """From a runtimes.Timing (or a dict with p50_ms, p90_ms, min_ms, mean_ms, runs[, std_ms])."""
        t = timing.as_dict() if hasattr(timing, "as_dict") else dict(timing)
        keys = ("p50_ms", "p90_ms", "min_ms", "mean_ms", "std_ms", "runs")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in provenance.items() if k not in known}
        prov = {k: v for k, v in provenance.items() if k in known}
        return cls(source="measured", device=device, runtime=runtime, threads=threads,
                   **{k: t[k] for k in keys if t.get(k) is not None}, **prov, extra=extra)

    @classmethod
    def none(cls, reason: str, device: str | None = None, **provenance: Any) -> Latency:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(source="none", device=device, reason=reason, **{k: v for k, v in provenance.items() if k in known},
                   extra={k: v for k, v in provenance.items() if k not in known})

    @property
    def usable(self) -> bool:
        """A figure that may stand for the device: measured there, or predicted with a stated error."""
        return self.source in ("measured", "predicted") and self.p50_ms is not None


@dataclass
class Verification(_Record):
    """An artifact run in its own runtime and compared with the torch model it was made from."""

    reference: str
    runtime: str
    inputs: int
    max_abs_err: float | None  # None: the runtime could not run it (`error` says why)
    max_abs_ref: float | None
    top1_agreement: float | None  # None where the first output is not a class vector
    tolerance: dict[str, Any]
    passed: bool
    quality: dict[str, Any] | None = None  # {"metric", "value", "inputs"}: on the run's quality split
    outputs: list[dict[str, Any]] | None = None  # every output: {"name", "max_abs_err", "max_abs_ref", "limit", "passed"}
    shapes: list[dict[str, Any]] | None = None  # the other shapes it ran at: {"shape", "max_abs_err", "passed", ...}
    error: str | None = None  # the artifact's own runtime could not load or run it (one line)


@dataclass
class Artifact(_Record):
    """A file (or folder) a stage wrote under the run folder. `model_version` is the index of the last stage that
    changed the model before it was made (-1: the model as loaded); `role` is "final" (artifacts/) or "baseline"
    (baseline/: the model as loaded, for before/after figures)."""

    path: str
    format: str
    runtime: str
    size_bytes: int
    sha256: str | None
    stage_index: int
    stage: str = ""
    precision: str = "fp32"
    sparse: bool = False
    model_version: int = -1
    role: str = "final"
    tolerance: dict[str, Any] | None = None
    verification: Verification | None = None
    latency: Latency = field(default_factory=Latency)
    latencies: list[Latency] | None = None
    companions: list[str] | None = None  # files that belong to it (e.g. a TVM library's JSON sidecar)
    # whether it kept the loaded model's signature (names, dynamic dims): {"kept": bool, "why": one line}
    signature: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        a = super().from_dict(d)
        if isinstance(a.verification, dict):
            a.verification = Verification.from_dict(a.verification)
        a.latency = Latency.from_dict(a.latency) if isinstance(a.latency, dict) else (a.latency or Latency())
        if a.latencies is not None:
            a.latencies = [Latency.from_dict(x) if isinstance(x, dict) else x for x in a.latencies]
        return a

    @property
    def quality(self) -> float | None:
        return ((self.verification.quality or {}).get("value")) if self.verification else None

    @property
    def passed(self) -> bool:
        return bool(self.verification and self.verification.passed)


@dataclass
class FileRecord(_Record):
    """A file in artifacts/ that is not a model (a policy, an adapter): listed so the folder holds only listed files."""

    path: str
    kind: str
    size_bytes: int
    sha256: str | None
    stage_index: int
    stage: str = ""
    model_version: int = -1
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainPoint(_Record):
    """The model after a stage: quality on the run's quality split, weights, and (where an artifact of it exists) the
    best artifact's size and latency. `by_runtime` holds each runtime's best artifact for the chain plot."""

    quality: float | None
    params: int | None = None
    nonzeros: int | None = None
    weights_bytes: int | None = None  # float32 parameters stored dense
    size_bytes: int | None = None
    p50_ms: float | None = None
    latency_source: str | None = None
    precision: str = "fp32"
    artifact: str | None = None  # the artifact size and p50 come from (the fastest, else the smallest)
    artifacts: list[str] | None = None
    by_runtime: dict[str, dict[str, Any]] | None = None


@dataclass
class StageResult(_Record):
    """One stage's record in report.json."""

    name: str
    index: int
    seconds: float
    fingerprint: str
    settings: dict[str, Any]
    changes: list[str] = field(default_factory=list)
    params_total: int | None = None
    params_nonzero: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    after: ChainPoint | None = None
    peak_rss_mb: int | None = None  # peak resident memory of the process or its largest child so far (never falls)
    children: dict[str, Any] | None = None  # the stage's work in child processes (edgekit.child.drain)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        s = super().from_dict(d)
        if isinstance(s.after, dict):
            s.after = ChainPoint.from_dict(s.after)
        return s


def new_report(**header: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "edgekit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **header, "stages": [], "artifacts": [], "files": [], "superseded": []}


def load_report(run_dir: str | Path) -> dict[str, Any]:
    """report.json as plain JSON data (schema 1 or 2)."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise InputError(f"no report.json in {run_dir}; is it a run folder written by `edgekit compress --out`?")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); the run folder is damaged") from None
    if not isinstance(report, dict) or report.get("schema") not in READABLE_SCHEMAS:
        raise InputError(f"{path} has schema {report.get('schema') if isinstance(report, dict) else '?'}; "
                         f"this edgekit reads schemas {', '.join(map(str, READABLE_SCHEMAS))}")
    return report


def typed(report: dict[str, Any]) -> dict[str, Any]:
    """The in-memory form: stages, artifacts and files as records (a schema-2 report.json read back)."""
    out = dict(report)
    out["stages"] = [s if isinstance(s, StageResult) else StageResult.from_dict(s) for s in report.get("stages", [])]
    for key, cls in (("artifacts", Artifact), ("files", FileRecord)):
        out[key] = [a if isinstance(a, cls) else cls.from_dict(a) for a in report.get(key, [])]
    base = dict(report.get("baseline") or {})
    base["artifacts"] = [a if isinstance(a, Artifact) else Artifact.from_dict(a) for a in base.get("artifacts", [])]
    out["baseline"] = base
    return out


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a report whose records may be typed."""
    return _plain(report)


def save_report(run_dir: str | Path, report: dict[str, Any], markdown: bool = True) -> Path:
    """Writes report.json, and report.md with its plots, atomically."""
    from edgekit.chain import fill_chain, summarize

    run_dir = Path(run_dir)
    data = fill_chain(to_json(report))
    data["summary"] = report["summary"] = summarize(data)
    path = write_json(run_dir / "report.json", data)
    if markdown:
        write_markdown(run_dir, data)
    return path


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Baseline-anchored before/after figures (see edgekit.chain.summarize)."""
    from edgekit.chain import summarize as _summarize

    return _summarize(to_json(report))


def write_markdown(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """report.md with its plots (chain.png, artifacts.png) beside report.json."""
    from edgekit.report_md import write_markdown as _write

    return _write(Path(run_dir), to_json(report))
