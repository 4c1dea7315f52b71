"""The run folder holds only what the report lists.

- Artifacts made before a stage that changes the model are stale: they move to superseded/ with a line in the
  report (`superseded`), so nobody deploys them by mistake and nobody compares against them.
- At the end of a run, files in artifacts/, baseline/ and superseded/ that the report does not list (left by an
  earlier recipe in the same folder) are removed and named in `removed`; so are the outputs of stages the recipe no
  longer has, and checkpoints beyond the recipe's length.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekit.contract import superseded_reason
from edgekit.report import Artifact, FileRecord

LISTED_FOLDERS = ("artifacts", "baseline", "superseded")


def supersede(out: Path, report: dict[str, Any], by_index: int, by_name: str) -> list[dict[str, Any]]:
    """Moves every final artifact and file made from a model older than stage `by_index` to superseded/."""
    moved = []
    for key in ("artifacts", "files"):
        keep = []
        for rec in report[key]:
            if rec.model_version >= by_index:
                keep.append(rec)
                continue
            dest = _move(out, rec.path, "superseded")
            companions = [_move(out, c, "superseded").relative_to(out).as_posix()
                          for c in getattr(rec, "companions", None) or []]
            entry = {"path": dest.relative_to(out).as_posix(), "was": rec.path, "kind": _kind(rec),
                     "made_by": rec.stage, "stage_index": rec.stage_index, "by": by_name, "by_index": by_index,
                     "reason": superseded_reason(rec.stage, by_name), "list": key, "record": rec.as_dict(),
                     **({"companions": companions} if companions else {})}
            report["superseded"] = [s for s in report["superseded"] if s["path"] != entry["path"]] + [entry]
            moved.append(entry)
        report[key] = keep
    return moved


def restore_superseded(out: Path, entries: list[dict[str, Any]], first_rerun: int, key: str) -> list[Any]:
    """Moves back what a reused stage (index < first_rerun) made and a re-running stage (index >= first_rerun)
    superseded; returns the restored records. The re-running stages overwrite whatever they write, so a file of
    theirs at the same path may be replaced."""
    restored = []
    for e in entries:
        if not (e.get("stage_index", -1) < first_rerun <= e.get("by_index", -1)) or e.get("list") != key:
            continue
        pairs = [(e["path"], e["was"])] + list(zip(e.get("companions", []), e["record"].get("companions") or [],
                                                   strict=False))
        if not (out / e["path"]).exists():
            continue
        for src, dest in pairs:
            if (out / src).exists():
                _replace(out / src, out / dest)
        restored.append((Artifact if key == "artifacts" else FileRecord).from_dict(e["record"]))
    return restored


def _replace(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir():
        shutil.rmtree(dest)
    elif dest.exists():
        dest.unlink()
    shutil.move(str(src), str(dest))


def _move(out: Path, rel: str, folder: str) -> Path:
    """Moves run-folder path `rel` into `folder`/ (replacing what is there); returns the new path."""
    src, dest = out / rel, out / folder / Path(rel).name
    if src.exists():
        _replace(src, dest)
    return dest


def _kind(rec: Artifact | FileRecord) -> str:
    if isinstance(rec, Artifact):
        return f"{rec.format} {rec.precision}" + (" sparse" if rec.sparse else "")
    return rec.kind


def listed_paths(report: dict[str, Any]) -> set[str]:
    arts = list(report["artifacts"]) + list((report.get("baseline") or {}).get("artifacts", []))
    paths = {a.path for a in arts} | {f.path for f in report["files"]}
    paths |= {c for a in arts for c in a.companions or []}
    paths |= {s["path"] for s in report.get("superseded", [])} | {c for s in report.get("superseded", [])
                                                                   for c in s.get("companions", [])}
    return paths


def sweep(out: Path, report: dict[str, Any], owned_elsewhere: set[str], n_stages: int) -> list[str]:
    """Removes what the report does not list; returns the removed paths (relative to the run folder).

    Args:
        owned_elsewhere: outputs (paths under the run folder) of stages that the recipe does not have.
        n_stages: the recipe's length (checkpoints of later positions are stale).
    """
    listed = listed_paths(report)
    removed = []
    for folder in LISTED_FOLDERS:
        d = out / folder
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*"), reverse=True):
            rel = p.relative_to(out).as_posix()
            if rel in listed or any(rel.startswith(f"{item}/") for item in listed):
                continue
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(rel)
            elif p.is_dir() and not any(p.iterdir()) and not any(item.startswith(f"{rel}/") for item in listed):
                p.rmdir()
    for rel in sorted(owned_elsewhere):
        p = out / rel
        if p.is_dir():
            shutil.rmtree(p)
            removed.append(rel + "/")
        elif p.is_file():
            p.unlink()
            removed.append(rel)
    state = out / "state"
    for p in sorted(state.glob("*.pt")) if state.is_dir() else []:
        if p.name[:2].isdigit() and int(p.name[:2]) >= n_stages:
            p.unlink()
    return sorted(removed)
