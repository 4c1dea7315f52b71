"""Parser for the output of TFLite's `benchmark_model` (native binary, or the benchmark APK's logcat lines).

The format is the one TFLite documents (tensorflow/lite/tools/benchmark/README.md, "Profiling model operators") and
prints today. Two table layouts exist and both are read:

- older builds: tab-separated, a `[start]` column, names in brackets, `[times called]` 0, a final line
  `Average inference timings in us: Warmup: W, Init: I, Inference: A`;
- current builds (LiteRT): `INFO: ` prefixes, space-aligned columns without `[start]`, node types that contain
  spaces (XNNPACK's detailed names such as `Convolution (NHWC, QC8) GEMM`), a per-run `count=... avg=... std=...`
  line for warm-up and for the steady-state runs, `Inference timings in us: Init: ..., First inference: ...,
  Warmup (avg): ..., Inference (avg): ...` and `Memory footprint delta from the start of the tool (MB): init=..
  overall=..`.

With --enable_op_profiling=true the tool prints "Profiling Info for Benchmark Initialization" (ignored here) and
"Operator-wise Profiling Info for Regular Benchmark Runs": its "Run Order" table is the per-operator profile.
`[avg ms]` there is per call and `[times called]` is calls per inference, so an operator's time per inference is
avg x max(times called, 1).
"""

from __future__ import annotations

import re
from typing import Any

from edgekit.errors import InputError

# logcat lines: threadtime "11-25 13:02:11.123  4312  4330 I tflite  : msg" and brief "I/tflite  ( 4312): msg".
_THREADTIME = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+(?P<tag>.*?)\s*: ?(?P<msg>.*)$")
_BRIEF = re.compile(r"^[VDIWEF]/(?P<tag>[^(]+?)\s*\(\s*\d+\): ?(?P<msg>.*)$")
LOG_TAG = "tflite"  # the tag the benchmark APK (and TFLITE_LOG on Android) logs under
_INFO = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE): ?")
_NUM = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_STAT = re.compile(rf"(\w+)=({_NUM})")
_PARAM = re.compile(r"^([A-Za-z#][^:\[]*?): \[(.*)\]$")


def clean_lines(text: str) -> list[str]:
    """Lines without logcat and log-level prefixes (blank lines kept: they end tables).

    When the text is a logcat capture, only the benchmark's own lines (tag `tflite`) are kept, so other apps'
    messages interleaved with the tables do not matter.
    """
    raw = text.splitlines()
    logcat = [m for line in raw if (m := _THREADTIME.match(line) or _BRIEF.match(line))]
    if logcat:
        lines = [m["msg"] for m in logcat if m["tag"].strip() == LOG_TAG]
    else:
        lines = raw
    return [_INFO.sub("", line.rstrip("\r\n")) for line in lines]


def _stats(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in _STAT.findall(line)}


def _row_regex(header: str) -> re.Pattern[str]:
    start = rf"\s+(?P<start>{_NUM})" if "[start]" in header else ""
    return re.compile(rf"^\s*(?P<type>\S.*?){start}\s+(?P<first>{_NUM})\s+(?P<avg>{_NUM})\s+(?P<pct>{_NUM})%"
                      rf"\s+(?P<cdf>{_NUM})%\s+(?P<mem>{_NUM})\s+(?P<times>\d+)\s+(?P<name>.*?)\s*$")


def _read_table(lines: list[str], i: int) -> tuple[list[dict[str, Any]], int]:
    """Reads the table whose title line is lines[i] ("=== Run Order ==="); returns rows and the next index."""
    header = lines[i + 1] if i + 1 < len(lines) else ""
    row_re = _row_regex(header)
    rows, j = [], i + 2
    while j < len(lines) and lines[j].strip():
        m = row_re.match(lines[j])
        if m:
            times, avg = int(m["times"]), float(m["avg"])
            row = {"type": m["type"].strip(), "name": m["name"], "first_ms": float(m["first"]), "avg_ms": avg,
                   "times_called": times, "percent": float(m["pct"]), "ms": avg * max(times, 1)}
            if m.groupdict().get("start") is not None:
                row["start_ms"] = float(m["start"])
            rows.append(row)
        j += 1
    return rows, j


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """Parses benchmark_model output (stdout or logcat) into plain numbers.

    Returns:
        {"params": {flag: value}, "model_size_mb", "init_ms", "first_inference_ms",
         "warmup": {count, first_us, min_us, max_us, avg_us, std_us} | None,
         "steady": {count, first_us, curr_us, min_us, max_us, avg_us, std_us},
         "memory": {"init_mb", "overall_mb", "peak_mb"?}, "per_op": [{type, name, ms, avg_ms, times_called,
         percent, first_ms}], "per_op_total": {count, avg_us, ...} | None, "delegates": [...], "format": "..."}
    Raises:
        InputError: when the text holds no benchmark result.
    """
    lines = clean_lines(text)
    res: dict[str, Any] = {"params": {}, "warmup": None, "steady": None, "memory": {}, "per_op": [],
                           "per_op_total": None, "delegates": [], "init_ms": None, "first_inference_ms": None,
                           "model_size_mb": None}
    runs: list[dict[str, float]] = []
    section = None  # None | "init" | "run": which op-profiling block we are in
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if m := _PARAM.match(line):
            res["params"][m[1].strip()] = m[2]
        elif line.startswith("count=") and "avg=" in line:
            runs.append(_stats(line))
        elif line.startswith("Initialized session in"):
            res["init_ms"] = float(re.findall(_NUM, line)[0])
        elif line.startswith("The input model file size (MB):"):
            res["model_size_mb"] = float(line.rsplit(":", 1)[1])
        elif line.startswith("Created TensorFlow Lite") and "delegate" in line:
            res["delegates"].append(line.rstrip("."))
        elif "Inference timings in us:" in line:
            vals = dict(re.findall(rf"([A-Za-z][A-Za-z ()]*?): ({_NUM})", line.split("us:", 1)[1]))
            init = vals.get("Init")
            if init is not None:
                res["init_ms"] = float(init) / 1e3
            if "First inference" in vals:
                res["first_inference_ms"] = float(vals["First inference"]) / 1e3
            res["inference_avg_us"] = float(vals.get("Inference (avg)", vals.get("Inference", "nan")))
            res["warmup_avg_us"] = float(vals.get("Warmup (avg)", vals.get("Warmup", "nan")))
        elif line.startswith(("Memory footprint delta", "Peak memory footprint")):
            mem = _stats(line)
            key = "peak" if line.startswith("Peak") else "delta"
            for k, v in mem.items():
                res["memory"][f"{key}_{k}_mb"] = v
        elif line.startswith("Profiling Info for Benchmark Initialization"):
            section = "init"
        elif line.startswith("Operator-wise Profiling Info for Regular Benchmark Runs"):
            section = "run"
        elif "= Run Order =" in line and section in ("run", None) and not res["per_op"]:
            # Older builds print the run table with no section title; an init table always has one.
            res["per_op"], i = _read_table(lines, i)
            section = section or "run"
            continue
        elif line.startswith("Timings (microseconds):") and section == "run":
            res["per_op_total"] = {("count" if k == "count" else f"{k}_us"): v for k, v in _stats(line).items()}
        i += 1
    _assign_runs(res, runs)
    if res["steady"] is None:
        raise InputError("no benchmark_model result found (expected a 'count=... avg=...' line or 'Inference "
                         "timings in us: ...'); is this the output of TFLite's benchmark_model?")
    legacy = any(ln.startswith("Average inference timings in us") for ln in lines)
    res["format"] = "legacy" if legacy else "current"
    return res


def _assign_runs(res: dict[str, Any], runs: list[dict[str, float]]) -> None:
    """The first count= line is warm-up, the last the steady-state runs; legacy output has neither."""
    def us(d: dict[str, float]) -> dict[str, float]:
        return {("count" if k == "count" else f"{k}_us"): v for k, v in d.items()}

    if len(runs) >= 2:
        res["warmup"], res["steady"] = us(runs[0]), us(runs[-1])
    elif len(runs) == 1:
        res["steady"] = us(runs[0])
    elif res["per_op_total"]:
        # Output cut to its profile (as in TFLite's README): the profiled runs' summary is the only distribution.
        res["steady"] = dict(res["per_op_total"])
    elif res.get("inference_avg_us") is not None:
        res["steady"] = {"avg_us": res["inference_avg_us"]}
    warm = res.get("warmup_avg_us")
    if res["warmup"] is None and warm is not None and warm == warm:  # NaN when the line lacked it
        res["warmup"] = {"avg_us": warm}
