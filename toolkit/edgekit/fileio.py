"""Atomic file writes and hashing: a run folder never holds a half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; give the result the permissions a plain open() would (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_cached(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered by (path, size, mtime, ctime, inode) in the cache folder, so that large models
    and data sets are hashed once, while a file replaced or rewritten at the same path is hashed again."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    cache = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")) / "sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}
    known[key] = digest
    try:
        write_json(cache, dict(list(known.items())[-2000:]))  # a bounded cache; losing it only costs time
    except OSError:
        pass
    return digest


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (settings, upstream fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_state(path: str | os.PathLike, what: str, error: type[Exception]) -> dict:
    """Reads a torch tensor file that a user may have handed us, with weights_only=True (nothing is unpickled).

    Args:
        path: the file.
        what: what it should hold, for the message ("weights file", "mask file").
        error: the exception raised, one line, when the file is missing, unreadable or not a mapping.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise error(f"{path} is not a readable {what} ({first}); is the file complete?") from None
    if not isinstance(state, dict):
        raise error(f"{path} does not hold a {what.removesuffix(' file')} (found {type(state).__name__})")
    return state


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_file_name(name: Any, what: str) -> str:
    """A name a setting gives to a file in the run folder must be a plain file name (no folders, no '..').

    Raises:
        SettingsError: one line naming the setting.
    """
    from edgekit.errors import SettingsError

    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise SettingsError(f"{what} must be a plain file name (letters, digits, '.', '_', '-'; no folders), "
                            f"got {name!r}")
    return name


def copy_atomic(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copies a file so that `dest` is either its old content or the whole new one, never a torn copy."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)
