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

# Logs are untrusted input (`profile --from-log`): every pattern here is anchored, and none has two unbounded parts
# that can match the same characters, so parsing is linear in the length of a line. Lines are split with str methods
# and numbers checked token by token.
# logcat lines: threadtime "11-25 13:02:11.123  4312  4330 I tflite  : msg" and brief "I/tflite  ( 4312): msg".
_THREADTIME = re.compile(r"\d\d-\d\d \d\d:\d\d:\d\d\.\d+ +\d+ +\d+ +[VDIWEF] ")
_BRIEF = re.compile(r"[VDIWEF]/")
_PID = re.compile(r" *\d+\):")
LOG_TAG = "tflite"  # the tag the benchmark APK (and TFLITE_LOG on Android) logs under
_INFO = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE): ?")
_NUM = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_NUM_RE = re.compile(_NUM)
_NAME = re.compile(r"\w+")
_PARAM = re.compile(r"^([A-Za-z#][^:\[]*?): \[(.*)\]$")


def _logcat(line: str) -> tuple[str, str] | None:
    """(tag, message) of a logcat line in threadtime or brief format, else None."""
    if m := _THREADTIME.match(line):
        tag, sep, msg = line[m.end():].partition(":")
    elif _BRIEF.match(line):
        tag, sep, rest = line[2:].partition("(")
        pid = _PID.match(rest) if sep else None
        if pid is None:
            return None
        msg = rest[pid.end():]
    else:
        return None
    if not sep:
        return None
    return tag.strip(), msg[1:] if msg.startswith(" ") else msg


def clean_lines(text: str) -> list[str]:
    """Lines without logcat and log-level prefixes (blank lines kept: they end tables).

    When the text is a logcat capture, only the benchmark's own lines (tag `tflite`) are kept, so other apps'
    messages interleaved with the tables do not matter.
    """
    raw = text.splitlines()
    logcat = [m for line in raw if (m := _logcat(line))]
    if logcat:
        lines = [msg for tag, msg in logcat if tag == LOG_TAG]
    else:
        lines = raw
    return [_INFO.sub("", line.rstrip("\r\n")) for line in lines]


def _is_num(token: str) -> bool:
    return _NUM_RE.fullmatch(token) is not None


def _stats(line: str) -> dict[str, float]:
    """'count=50 first=1 avg=2.5 ...' -> {name: value} (tokens without '=NUMBER' are skipped)."""
    out = {}
    for token in line.replace(",", " ").split():
        key, sep, value = token.partition("=")
        if sep and _NAME.fullmatch(key) and _is_num(value):
            out[key] = float(value)
    return out


def _row(line: str, with_start: bool) -> dict[str, Any] | None:
    """One operator row: [node type] [start]? [first] [avg ms] [%] [cdf%] [mem KB] [times called] [Name].

    The node type may contain spaces (XNNPACK's names): it ends at the first token from which the numeric columns
    follow; the name is the rest of the line.
    """
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", line)]
    tokens = [line[a:b] for a, b in spans]
    k = 7 if with_start else 6
    for i in range(1, len(tokens) - k + 1):
        cols = tokens[i:i + k]
        if not _is_num(cols[0]):
            continue
        nums = cols[1:] if with_start else cols
        if not (_is_num(nums[0]) and _is_num(nums[1]) and nums[2].endswith("%") and _is_num(nums[2][:-1])
                and nums[3].endswith("%") and _is_num(nums[3][:-1]) and _is_num(nums[4]) and nums[5].isdigit()):
            continue
        times, avg = int(nums[5]), float(nums[1])
        name = line[spans[i + k][0]:].strip() if i + k < len(spans) else ""
        row = {"type": line[spans[0][0]:spans[i - 1][1]].strip(), "name": name, "first_ms": float(nums[0]),
               "avg_ms": avg, "times_called": times, "percent": float(nums[2][:-1]), "ms": avg * max(times, 1)}
        if with_start:
            row["start_ms"] = float(cols[0])
        return row
    return None


def _read_table(lines: list[str], i: int) -> tuple[list[dict[str, Any]], int]:
    """Reads the table whose title line is lines[i] ("=== Run Order ==="); returns rows and the next index."""
    header = lines[i + 1] if i + 1 < len(lines) else ""
    with_start = "[start]" in header
    rows, j = [], i + 2
    while j < len(lines) and lines[j].strip():
        row = _row(lines[j], with_start)
        if row is not None:
            rows.append(row)
        j += 1
    return rows, j


def _timings(text: str) -> dict[str, str]:
    """'Init: 1000, First inference: 2000, Warmup (avg): 1.5e+03, Inference (avg): 95.5' -> {label: number}."""
    out = {}
    for part in text.split(","):
        label, sep, value = part.partition(":")
        value = value.strip()
        if sep and _is_num(value):
            out[label.strip()] = value
    return out


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
            if m := _NUM_RE.search(line):
                res["init_ms"] = float(m[0])
        elif line.startswith("The input model file size (MB):"):
            res["model_size_mb"] = float(line.rsplit(":", 1)[1])
        elif line.startswith("Created TensorFlow Lite") and "delegate" in line:
            res["delegates"].append(line.rstrip("."))
        elif "Inference timings in us:" in line:
            vals = _timings(line.split("us:", 1)[1])
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
