"""The run folder: claimed with a marker file before anything is written, cleaned of torn temporary files, and
keyed by the content (not the path) of everything a run reads.

A folder edgekit did not create is never written into: `--out` pointing at a non-empty folder without the marker is
refused, so a user's own report.md or artifacts.png is never overwritten.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.fileio import fingerprint, sha256_cached, write_text

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
        from edgekit import __version__

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
