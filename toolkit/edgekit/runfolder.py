"""The run folder: claimed, kept clean, and holding only what the report lists.

A run folder is claimed with a marker file before anything is written, cleaned of torn temporary files, and
keyed by the content (not the path) of everything a run reads.

A folder edgekit did not create is never written into: `--out` pointing at a non-empty folder without the marker is
refused, so a user's own report.md or artifacts.png is never overwritten.

Keeping it to what the report lists:
- Artifacts made before a stage that changes the model are stale: they move to superseded/ with a line in the
  report (`superseded`), so nobody deploys them by mistake and nobody compares against them.
- At the end of a run, files in artifacts/, baseline/ and superseded/ that the report does not list (left by an
  earlier recipe in the same folder) are removed and named in `removed`; so are the outputs of stages the recipe no
  longer has, and checkpoints beyond the recipe's length.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

from edgekit.contract import superseded_reason
from edgekit.errors import EdgekitError
from edgekit.fileio import fingerprint, sha256_cached, write_text
from edgekit.report import Artifact, FileRecord

MARKER = ".edgekit-run"
# atomic_path's temporary names: ".<name>.<random>.tmp" beside the file being written.
_TMP = re.compile(r"^\.[^/]+\.[A-Za-z0-9_]{6,}\.tmp$")


_ZOO_PREFIXES = ("edgekit", "torchvision", "timm")  # zoo names identify themselves; anything else is a module


class RunFolderError(EdgekitError):
    """--out names something that is not (and cannot become) an edgekit run folder."""


def _legacy_run(folder: Path) -> bool:
    """A run folder written before markers existed: report.json with edgekit's header."""
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "edgekit_version" in report and "schema" in report


def check_run_folder(out: str | Path) -> None:
    """Refuses an --out that is a file, or a non-empty folder that is not an edgekit run folder; writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is not a folder")
    if not out.is_dir() or (out / MARKER).is_file() or _legacy_run(out):
        return
    if any(out.iterdir()):
        raise RunFolderError(f"--out {out} is not an edgekit run folder and is not empty; pick a new or empty folder "
                             f"(edgekit writes report.md, report.json and artifacts/ there)")


def claim_run_folder(out: str | Path) -> Path:
    """Makes `out` a run folder: checks it, writes the marker first, then removes temporary files that a killed run
    left behind (only atomic_path's own names)."""
    out = Path(out)
    check_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        from edgekit.version import __version__

        write_text(out / MARKER, f"edgekit run folder (edgekit {__version__}); edgekit writes here\n")
    for p in out.rglob("*.tmp"):
        if p.is_file() and _TMP.match(p.name):
            p.unlink(missing_ok=True)
    return out


def _path_id(path: Path) -> str:
    """Content id of a file, or of a folder's files (relative names and contents)."""
    if path.is_file():
        return sha256_cached(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return fingerprint([(p.relative_to(path).as_posix(), sha256_cached(p)) for p in files])


def input_identity(model: str | None, data: str | None) -> list[str]:
    """What identifies a run's inputs beyond their names: the content of a model file (.onnx, .pt2), of a data file
    or image folder, and the source file of a module:factory's module. Zoo names and built-ins identify themselves.
    """
    ids = []
    if model:
        path = Path(model)
        if path.exists() and path.suffix in (".onnx", ".pt2"):
            ids.append(f"model:{_path_id(path)}")
        elif ":" in model and not path.exists() and model.partition(":")[0] not in _ZOO_PREFIXES:
            spec = _module_spec(model.partition(":")[0])
            origin = getattr(spec, "origin", None)
            if origin and Path(origin).is_file():
                ids.append(f"factory:{sha256_cached(origin)}")
    if data and data not in ("digits", "synthetic") and Path(data).exists():
        ids.append(f"data:{_path_id(Path(data))}")
    return ids


def _module_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


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
