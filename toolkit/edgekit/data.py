"""Data sets: the built-in digits, image folders, .npz arrays, and synthetic calibration inputs.

Every loader returns a `DataBundle` with fixed, seeded splits, so runs and benchmarks are repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from edgekit.errors import InputError

DIGITS_SPLIT_SEED = 0
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class DataBundle:
    """Arrays in the model's input layout (N, C, H, W), float32; labels int64 or None when unlabelled."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    description: str

    @property
    def labelled(self) -> bool:
        return self.y_test is not None

    @property
    def quality_metric(self) -> str:
        """accuracy on labelled test data, else top-1 agreement with the uncompressed model."""
        return "accuracy" if self.labelled else "agreement"

    def calibration(self, n: int = 64) -> np.ndarray:
        """Inputs for calibration (from the train split, never the test split)."""
        return self.x_train[:n]


@cache
def digits() -> DataBundle:
    """scikit-learn's 8x8 digits: 1797 images, fixed stratified 75/25 split, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=DIGITS_SPLIT_SEED, stratify=y)
    return DataBundle("digits", x_tr, y_tr, x_te, y_te,
                      "scikit-learn digits (8x8, 10 classes), stratified 75/25 split, seed 0")


def synthetic(input_shape: tuple[int, ...], n_train: int = 64, n_test: int = 64, seed: int = 0) -> DataBundle:
    """Unlabelled standard-normal inputs of the model's shape, for models without data."""
    rng = np.random.default_rng(seed)
    shape = tuple(input_shape[1:])
    x_tr = rng.standard_normal((n_train, *shape), dtype=np.float32)
    x_te = rng.standard_normal((n_test, *shape), dtype=np.float32)
    return DataBundle("synthetic", x_tr, None, x_te, None,
                      f"synthetic standard-normal inputs {list(shape)} (no labels: quality is agreement)")


def load_data(spec: str | None, input_shape: tuple[int, ...], default: str | None = None) -> DataBundle:
    """Resolves `--data`.

    Args:
        spec: "digits", an image folder (one sub-folder per class), an .npz with x (and optionally y), or None.
        input_shape: the model's input shape (N, C, H, W); data must fit it.
        default: the data the model was made for, used when spec is None.
    """
    spec = spec or default
    if spec is None or spec == "synthetic":
        return synthetic(input_shape)
    if spec == "digits":
        bundle = digits()
    else:
        path = Path(spec)
        if path.is_dir():
            bundle = _image_folder(path, input_shape)
        elif path.suffix == ".npz":
            bundle = _npz(path)
        elif not path.exists():
            raise InputError(f"unknown data '{spec}': use digits, an image folder, or an .npz file with x/y arrays")
        else:
            raise InputError(f"cannot read data from {spec}: expected an image folder or an .npz file")
    expected = tuple(input_shape[1:])
    if tuple(bundle.x_test.shape[1:]) != expected:
        raise InputError(f"data '{spec}' has inputs of shape {list(bundle.x_test.shape[1:])} but the model expects "
                         f"{list(expected)}; pass matching --data or --input-shape")
    return bundle


def _split(name: str, x: np.ndarray, y: np.ndarray | None, description: str) -> DataBundle:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    cut = max(1, int(round(len(x) * 0.75)))
    tr, te = order[:cut], order[cut:] if len(x) > 1 else order[:cut]
    return DataBundle(name, x[tr], None if y is None else y[tr], x[te], None if y is None else y[te], description)


def _npz(path: Path) -> DataBundle:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f:
                raise InputError(f"{path} has no array named 'x' (found {sorted(f.files)})")
            x = f["x"].astype(np.float32)
            y = f["y"].astype(np.int64) if "y" in f else None
            # An explicit held-out split (x_test, y_test) is used as given instead of a split of x.
            x_test = f["x_test"].astype(np.float32) if "x_test" in f else None
            y_test = f["y_test"].astype(np.int64) if "y_test" in f else None
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path} is not a readable .npz file ({e})") from None
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    if x_test is not None:
        if (y is None) != (y_test is None) or (y_test is not None and len(y_test) != len(x_test)):
            raise InputError(f"{path}: x_test needs y_test of the same length exactly when x has labels y")
        if x_test.shape[1:] != x.shape[1:]:
            raise InputError(f"{path}: x_test has inputs of shape {list(x_test.shape[1:])}, x has {list(x.shape[1:])}")
        desc = f"{path}: {len(x)} training and {len(x_test)} held-out arrays" + (" with labels" if y is not None else "")
        return DataBundle(str(path), x, y, x_test, y_test, desc)
    return _split(str(path), x, y, f"{path}: {len(x)} arrays" + (" with labels" if y is not None else " (no labels)"))


def _image_folder(path: Path, input_shape: tuple[int, ...]) -> DataBundle:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{path} has no class sub-folders (expected one folder of images per class)")
    _, c, h, w = input_shape
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() not in _IMAGE_EXT:
                continue
            try:
                img = Image.open(f).convert("RGB" if c == 3 else "L").resize((w, h))
            except (UnidentifiedImageError, OSError) as e:
                raise InputError(f"cannot read image {f}: {e}") from None
            arr = np.asarray(img, np.float32) / 255.0
            arr = arr.transpose(2, 0, 1) if c == 3 else arr[None]
            if c == 3:
                arr = (arr - mean) / std
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise InputError(f"{path}: no images found in its class folders")
    return _split(str(path), np.stack(xs).astype(np.float32), np.array(ys, np.int64),
                  f"image folder {path}: {len(xs)} images, {len(classes)} classes")


def from_arrays(x: np.ndarray, y: np.ndarray | None = None, x_test: np.ndarray | None = None,
                y_test: np.ndarray | None = None, name: str = "arrays", what: str = "arrays") -> DataBundle:
    """A DataBundle from arrays (the Python API's data=): x (N, C, H, W) float, y integer labels or None.

    Without x_test the arrays are split 75/25 with a fixed seed, like an .npz. The name carries a hash of the
    arrays, so a resumed run knows whether the data changed.
    """
    import hashlib

    def arr(a: object, dtype: type) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(np.asarray(a), dtype=dtype)

    x, x_test = arr(x, np.float32), arr(x_test, np.float32)
    y, y_test = arr(y, np.int64), arr(y_test, np.int64)
    if x is None or x.ndim != 4:
        raise InputError(f"data arrays must be N,C,H,W, got shape {None if x is None else list(x.shape)}")
    if y is not None and len(y) != len(x):
        raise InputError(f"data: x has {len(x)} rows but y has {len(y)}")
    if x_test is not None and ((y is None) != (y_test is None) or x_test.shape[1:] != x.shape[1:]):
        raise InputError("data: x_test must match x's shape, with y_test exactly when y is given")
    h = hashlib.sha256()
    for a in (x, y, x_test, y_test):
        if a is not None:
            h.update(a.tobytes())
    tag = f"{name}:{h.hexdigest()[:16]}"
    label = " with labels" if y is not None else " (no labels)"
    if x_test is not None:
        return DataBundle(tag, x, y, x_test, y_test, f"{what}: {len(x)} training and {len(x_test)} held-out{label}")
    return _split(tag, x, y, f"{what}: {len(x)} inputs{label}, split 75/25 (seed 0)")
