"""The chain a run tells: the model as loaded, each stage that changed it, and the final artifacts; and the
baseline-anchored summary that CI gates read.

Everything here works on report.json's JSON form, so `edgekit report` computes the same figures from a run folder
that `compress` wrote.
"""

from __future__ import annotations

from typing import Any

# Stage changes that make a new chain point (artifacts alone do not, except a new precision: quantize).
MODEL_CHANGES = ("weights", "masks", "structure")


def _usable(a: dict[str, Any]) -> float | None:
    lat = a.get("latency") or {}
    return lat.get("p50_ms") if lat.get("source") in ("measured", "predicted") else None


def _quality(a: dict[str, Any]) -> float | None:
    return ((a.get("verification") or {}).get("quality") or {}).get("value")


def quality_drop(report: dict[str, Any], before: float | None, after: float | None) -> float | None:
    """How much worse `after` is than `before` in the run's metric (report.quality): points of a percentage, or dB;
    an error metric (lower is better) drops when it grows."""
    if before is None or after is None:
        return None
    q = report.get("quality") or {}
    diff = (before - after) if q.get("higher_is_better", True) else (after - before)
    return 100.0 * diff if q.get("unit", "pts") == "pts" else float(diff)


def _passed(a: dict[str, Any]) -> bool:
    return bool((a.get("verification") or {}).get("passed"))


def _runtime_key(a: dict[str, Any]) -> str:
    return a.get("runtime", "?") + (" (sparse)" if a.get("sparse") else "")


def baseline_artifacts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Float artifacts of the model as loaded: baseline/ when a stage changed the model, else the final float ones."""
    arts = (report.get("baseline") or {}).get("artifacts") or []
    if arts:
        return arts
    return [a for a in report.get("artifacts", []) if a.get("model_version", -1) == -1 and a.get("precision") == "fp32"
            and not a.get("sparse")]


def point_artifacts(report: dict[str, Any], stage: dict[str, Any]) -> list[dict[str, Any]]:
    """The final artifacts that stand for the model right after `stage`."""
    i = stage.get("index")
    if not set(stage.get("changes", [])) & set(MODEL_CHANGES):  # e.g. quantize: its own artifacts
        return [a for a in report.get("artifacts", []) if a.get("stage_index") == i]
    return [a for a in report.get("artifacts", []) if a.get("model_version") == i and a.get("precision") == "fp32"]


def representative(arts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The artifact a point's figures come from: the fastest with a usable latency, else the smallest."""
    timed = [a for a in arts if _usable(a) is not None]
    if timed:
        return min(timed, key=lambda a: (_usable(a), a.get("size_bytes") or 0))
    sized = [a for a in arts if a.get("size_bytes") is not None]
    return min(sized, key=lambda a: a["size_bytes"]) if sized else None


def _fill(point: dict[str, Any], arts: list[dict[str, Any]]) -> dict[str, Any]:
    point = dict(point)
    if not arts:
        return point
    by_rt: dict[str, dict[str, Any]] = {}
    for a in arts:
        k = _runtime_key(a)
        entry = {"path": a["path"], "p50_ms": _usable(a), "size_bytes": a.get("size_bytes"), "quality": _quality(a),
                 "latency_source": (a.get("latency") or {}).get("source", "none")}
        old = by_rt.get(k)
        if old is None or (entry["p50_ms"] or float("inf")) < (old["p50_ms"] or float("inf")):
            by_rt[k] = entry
    rep = representative(arts)
    point["artifacts"] = [a["path"] for a in arts]
    point["by_runtime"] = by_rt
    if rep is not None:
        point["artifact"] = rep["path"]
        point["size_bytes"] = rep.get("size_bytes")
        point["p50_ms"] = _usable(rep)
        point["latency_source"] = (rep.get("latency") or {}).get("source", "none")
        if _quality(rep) is not None and point.get("precision") != "fp32":
            point["quality"] = _quality(rep)
    return point


def fill_chain(report: dict[str, Any]) -> dict[str, Any]:
    """Fills each chain point (report.baseline.point and stages[i].after) with its artifacts' size and latency."""
    base = report.get("baseline") or {}
    if base.get("point"):
        base["point"] = _fill(base["point"], baseline_artifacts(report))
    for st in report.get("stages", []):
        if st.get("after"):
            st["after"] = _fill(st["after"], point_artifacts(report, st))
    return report


def chain(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """[(label, point)]: the model as loaded, then every stage with an `after` point, in order."""
    out = []
    base = (report.get("baseline") or {}).get("point")
    if base:
        out.append(("loaded model", base))
    for st in report.get("stages", []):
        if st.get("after"):
            out.append((st["name"], st["after"]))
    return out


def budget(report: dict[str, Any]) -> float | None:
    return (report.get("budget") or {}).get("max_quality_drop")


def dynamic_signature(report: dict[str, Any]) -> bool:
    """The loaded model leaves some input dimension dynamic (report.signature)."""
    return any(t.get("dynamic") for t in (report.get("signature") or {}).get("inputs", []))


def _kept(a: dict[str, Any]) -> bool:
    return bool((a.get("signature") or {}).get("kept", True))


def recommended(report: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(the artifact the summary's "after" describes, whether it is within the quality budget).

    Among verified final artifacts whose drop from the loaded model is within the budget (any drop when the run has
    no budget): the fastest usable latency, else the smallest. When the model leaves an input dimension dynamic,
    only artifacts that kept its signature are candidates (a drop-in replacement), unless none did. When none is
    within the budget: the best quality (then the fastest).
    """
    arts, within = _recommended(report, drop_in=dynamic_signature(report))
    return arts, within


def _recommended(report: dict[str, Any], drop_in: bool) -> tuple[dict[str, Any] | None, bool]:
    q0 = ((report.get("baseline") or {}).get("point") or {}).get("quality")
    arts = [a for a in report.get("artifacts", []) if _passed(a) and _quality(a) is not None]
    if drop_in and any(_kept(a) for a in arts):
        arts = [a for a in arts if _kept(a)]
    if not arts:
        return None, True
    limit = budget(report)

    def drop(a: dict[str, Any]) -> float:
        return quality_drop(report, q0, _quality(a)) if q0 is not None else 0.0

    ok = [a for a in arts if limit is None or drop(a) <= limit + 1e-9]
    if not ok:  # the best quality; among equals the fastest, then the smallest
        return min(arts, key=lambda a: (drop(a), _usable(a) or float("inf"), a.get("size_bytes") or 0)), False
    timed = [a for a in ok if _usable(a) is not None]
    if timed:
        return min(timed, key=lambda a: (_usable(a), drop(a), a.get("size_bytes") or 0)), True
    return min(ok, key=lambda a: (a.get("size_bytes") or 0, drop(a))), True


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Flat figures that CI gates address by name (`--fail-on 'quality_drop>1.0'`), anchored at the model as loaded.

    before: the loaded model: its quality on the run's quality split; size and p50 of its fastest float artifact
    (`artifact_before`: baseline/, or the final float artifacts when no stage changed the model).
    after: the recommended final artifact (`artifact`), its quality measured by verify on the same inputs.
    quality_drop is in points; quality_drop_max is the worst verified final artifact's drop.
    """
    if report.get("schema", 2) < 2:
        return _summarize_v1(report)
    metric = (report.get("data") or {}).get("quality_metric")
    base = (report.get("baseline") or {}).get("point") or {}
    q_before = base.get("quality")
    rec, within = recommended(report)
    points = chain(report)
    q_after = _quality(rec) if rec else (points[-1][1].get("quality") if points else None)
    drop = quality_drop(report, q_before, q_after)
    drop = round(drop, 4) if drop is not None else None
    base_arts = baseline_artifacts(report)
    # the loaded model's fastest float artifact (else its smallest); one that keeps a dynamic signature, like after
    kept_base = [a for a in base_arts if _kept(a)] if dynamic_signature(report) else []
    before = representative(kept_base or base_arts)
    p50_before, p50_after = (_usable(before) if before else None), (_usable(rec) if rec else None)
    size_before = before.get("size_bytes") if before else base.get("weights_bytes")
    size_after = rec.get("size_bytes") if rec else None
    drops = [quality_drop(report, q_before, q) for a in report.get("artifacts", []) if _passed(a)
             and (q := _quality(a)) is not None] if q_before is not None else []
    arts = report.get("artifacts", []) + base_arts
    return {"quality_metric": metric, "quality_unit": (report.get("quality") or {}).get("unit", "pts"),
            "quality_before": q_before, "quality_after": q_after, "quality_drop": drop,
            "quality_drop_max": round(max(drops), 4) if drops else None,
            "size_before_bytes": size_before, "size_after_bytes": size_after,
            "size_ratio": round(size_before / size_after, 4) if size_before and size_after else None,
            "p50_ms_before": p50_before, "p50_ms_after": p50_after, "p50_ms": p50_after,
            "speedup": round(p50_before / p50_after, 4) if p50_before and p50_after else None,
            "artifact": rec["path"] if rec else None, "artifact_before": before["path"] if before else None,
            **_drop_in(report, rec),
            "budget": budget(report),
            "budget_met": None if budget(report) is None or drop is None else bool(within and drop <= budget(report)
                                                                                    + 1e-9),
            "latency_sources": sorted({(a.get("latency") or {}).get("source", "none") for a in arts}),
            "artifacts_failed": sum((a.get("verification") or {}).get("passed") is False for a in arts),
            "superseded": len(report.get("superseded", []))}


def _drop_in(report: dict[str, Any], rec: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the recommended artifact kept the model's signature, and the faster artifact that did not (if any)."""
    if rec is None or not report.get("signature"):
        return {}
    out: dict[str, Any] = {"signature_kept": _kept(rec)}
    if not _kept(rec):
        out["signature_note"] = (rec.get("signature") or {}).get("why")
    fastest, _ = _recommended(report, drop_in=False)
    if fastest is not None and fastest is not rec and not _kept(fastest) and (_usable(fastest) or 0) < (
            _usable(rec) or float("inf")):
        out["faster_not_drop_in"] = {"artifact": fastest["path"], "p50_ms": _usable(fastest),
                                     "why": (fastest.get("signature") or {}).get("why")}
    return out


def _summarize_v1(report: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 run folders keep the summary they were written with."""
    return dict(report.get("summary") or {})
