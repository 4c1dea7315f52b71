"""CI gates on report fields: 'quality_drop>1.0', 'p50_ms>20', 'artifacts.0.size_bytes>=1e6'.

A gate names a condition that FAILS the job when true. The field is looked up, in order: in report["summary"], as
a dotted path from the top of the report, and as a key of each artifact (then every artifact that has the field is
checked, nested dicts such as latency and verification included).
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

from edgekit.errors import SettingsError

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


def parse_gate(text: str) -> tuple[str, str, float | str | bool]:
    m = _GATE.match(text)
    if not m:
        raise SettingsError(f"--fail-on '{text}' is not FIELD OP VALUE, e.g. 'quality_drop>1.0' or 'p50_ms>20'")
    field, op, raw = m.groups()
    value: float | str | bool
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = float(raw)
            if not math.isfinite(value):
                raise SettingsError(f"--fail-on '{text}': the threshold must be a finite number, got '{raw}'")
        except ValueError:
            if raw[0] in "<>=!":
                raise SettingsError(f"--fail-on '{text}' has two operators; write FIELD OP VALUE, "
                                    "e.g. 'quality_drop>1.0'") from None
            value = raw
    return field, op, value


def _dotted(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            raise KeyError(path)
    return obj


def _find_in(obj: Any, key: str) -> list[Any]:
    """Values of `key` in obj, searching nested dicts (depth-first)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and not isinstance(v, (dict, list)):
                found.append(v)
            elif isinstance(v, dict):
                found += _find_in(v, key)
    return found


def lookup(report: dict[str, Any], field: str) -> list[tuple[str, Any]]:
    """(where, value) pairs for a gate's field; an empty list when the report has no such field."""
    summary = report.get("summary") or {}
    if field in summary:
        return [(f"summary.{field}", summary[field])]
    try:
        return [(field, _dotted(report, field))]
    except KeyError:
        pass
    out = []
    for a in report.get("artifacts", []):
        out += [(f"{a['path']}:{field}", v) for v in _find_in(a, field)]
    return out


def check_gates(report: dict[str, Any], gates: list[str]) -> list[str]:
    """Returns one message per failed gate (empty: all pass). A gate whose field is missing fails: a CI gate that
    silently checks nothing would be worse than a red job."""
    failures = []
    for text in gates:
        field, op, value = parse_gate(text)
        hits = lookup(report, field)
        if not hits:
            failures.append(f"{text}: the report has no field '{field}'")
            continue
        if all(got is None for _, got in hits):
            # e.g. p50_ms of a target whose latency was not measured: checking nothing must not pass
            failures.append(f"{text}: {hits[0][0]} has no value (not measured or not available)")
            continue
        for where, got in hits:
            if got is None:
                continue
            if isinstance(got, float) and not math.isfinite(got):
                # NaN compares false with everything: a NaN quality drop would pass any gate.
                failures.append(f"{text}: {where} = {got} is not a finite number")
                continue
            try:
                bad = _OPS[op](got, value)
            except TypeError:
                failures.append(f"{text}: {where} = {got!r} cannot be compared with {value!r}")
                continue
            if bad:
                failures.append(f"{text}: {where} = {got}")
    return failures
