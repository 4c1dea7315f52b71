"""Data sets: the built-in digits, image folders, .npz arrays, and synthetic calibration inputs.

Every loader returns a `DataBundle` with fixed, seeded splits, so runs and benchmarks are repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError

DIGITS_SPLIT_SEED = 0
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class Inputs:
    """The inputs of a model with several inputs (or integer / scalar ones): one array per input name, each with a
    leading row axis; row i is one complete feed, `{name: array[i]}`, at the model's own input shapes. Slicing and
    len() act on rows, like a single input's (N, ...) array does, so the pipeline passes either along.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        if not arrays:
            raise InputError("a model needs at least one input")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(f"inputs have different numbers of rows: {lengths}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, key: object) -> Inputs:
        return Inputs({k: v[key] for k, v in self.arrays.items()})

    def row(self, i: int) -> dict[str, np.ndarray]:
        """The feed of row i, at the model's input shapes."""
        return {k: v[i] for k, v in self.arrays.items()}

    def astype(self, dtype: object) -> Inputs:
        """Float inputs in `dtype`; integer inputs keep theirs (they come from the model's signature)."""
        return Inputs({k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in self.arrays.items()})

    @property
    def shape(self) -> tuple[int, ...]:
        """The first input's shape (rows first)."""
        return next(iter(self.arrays.values())).shape

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.arrays.values())

    def tobytes(self) -> bytes:
        return b"".join(k.encode() + np.ascontiguousarray(v).tobytes() for k, v in self.arrays.items())

    def __repr__(self) -> str:
        return f"Inputs({', '.join(f'{k}: {list(v.shape)} {v.dtype}' for k, v in self.arrays.items())})"


@dataclass
class DataBundle:
    """Inputs in the model's layout: one (N, ...) float32 array for a model with one float input, an `Inputs` for
    several (or integer) inputs; labels int64, strings, per-input arrays (detection) or None when unlabelled."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    description: str
    held_out_given: bool = False  # the test split came as such (x_test), not cut from x

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


SYNTHETIC_SPLIT_MB = 64  # made-up data per split is capped in bytes (a 736x992 page is 8.8 MB a row), at least 8 rows


def _rows(n: int, row_bytes: int) -> int:
    return min(n, max(8, int(SYNTHETIC_SPLIT_MB * 2**20 // max(row_bytes, 1))))


def synthetic(input_shape: tuple[int, ...], n_train: int = 64, n_test: int = 64, seed: int = 0) -> DataBundle:
    """Unlabelled standard-normal inputs of the model's shape, for models without data (at most
    SYNTHETIC_SPLIT_MB per split)."""
    rng = np.random.default_rng(seed)
    shape = tuple(input_shape[1:])
    row = 4 * int(np.prod(shape))
    n_train, n_test = _rows(n_train, row), _rows(n_test, row)
    x_tr = rng.standard_normal((n_train, *shape), dtype=np.float32)
    x_te = rng.standard_normal((n_test, *shape), dtype=np.float32)
    return DataBundle("synthetic", x_tr, None, x_te, None,
                      f"synthetic standard-normal inputs {list(shape)} (no labels: quality is agreement)")


def synthetic_inputs(specs: list[dict[str, Any]], n_train: int = 64, n_test: int = 64, seed: int = 0) -> DataBundle:
    """Unlabelled data for a model with several inputs: each input made as its spec says ("fill": "normal" or
    "zeros", in its "dtype"), at its "shape" (one row = one feed)."""
    rng = np.random.default_rng(seed)
    row = sum(np.dtype(s["dtype"]).itemsize * int(np.prod(s["shape"])) for s in specs)
    n_train, n_test = _rows(n_train, row), _rows(n_test, row)

    def make(n: int) -> Inputs:
        arrays = {}
        for s in specs:
            shape = (n, *s["shape"])
            if s["fill"] == "zeros":
                arrays[s["name"]] = np.zeros(shape, s["dtype"])
            else:
                arrays[s["name"]] = rng.standard_normal(shape).astype(s["dtype"])
        return Inputs(arrays)

    made = "; ".join(f"{s['name']} {list(s['shape'])}: {s['why']}" for s in specs)
    return DataBundle("synthetic", make(n_train), None, make(n_test), None,
                      f"synthetic inputs (no labels: quality is against the loaded model): {made}")


def load_data(spec: str | None, input_shape: tuple[int, ...], default: str | None = None,
              inputs: list[dict[str, Any]] | None = None) -> DataBundle:
    """Resolves `--data`.

    Args:
        spec: "digits", an image folder (one sub-folder per class), an .npz with x (and optionally y), or None.
        input_shape: the model's input shape (N, C, H, W); data must fit it.
        default: the data the model was made for, used when spec is None.
        inputs: the specs of a model with several inputs (importers.native.input_specs): synthetic data is made
            for each, and an .npz holds one array per input name.
    """
    if inputs:
        return _several_inputs(spec, inputs)
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
    for split, x in (("training", bundle.x_train), ("test", bundle.x_test)):
        if x.ndim < 2 or len(x) == 0:
            raise InputError(f"data '{spec}' has no {split} inputs (shape {list(x.shape)}); it needs at least one "
                             f"array per split")
    expected = tuple(input_shape[1:])
    if tuple(bundle.x_test.shape[1:]) != expected:
        raise InputError(f"data '{spec}' has inputs of shape {list(bundle.x_test.shape[1:])} but the model expects "
                         f"{list(expected)}; pass matching --data or --input-shape")
    return bundle


def _several_inputs(spec: str | None, inputs: list[dict[str, Any]]) -> DataBundle:
    """Data of a model with several inputs: synthetic, or an .npz with one array per input name (rows first; the
    shape after the rows must be the input's) and optional labels `y`."""
    if spec in (None, "synthetic"):
        return synthetic_inputs(inputs)
    path = Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        raise InputError(f"data '{spec}': a model with several inputs takes an .npz with one array per input "
                         f"({', '.join(s['name'] for s in inputs)})")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [s["name"] for s in inputs if s["name"] not in f]
            if missing:
                raise InputError(f"{path} has no arrays named {missing} (found {sorted(f.files)}); it needs one "
                                 f"array per input")
            arrays = {s["name"]: f[s["name"]].astype(s["dtype"]) for s in inputs}
            y = f["y"] if "y" in f else None
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path} is not a readable .npz file ({' '.join(str(e).split())[:200]})") from None
    for s in inputs:
        if tuple(arrays[s["name"]].shape[1:]) != tuple(s["shape"]):
            raise InputError(f"{path}: '{s['name']}' rows have shape {list(arrays[s['name']].shape[1:])}, the input "
                             f"is {list(s['shape'])}")
    x = Inputs(arrays)
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: the inputs have {len(x)} rows but y has {len(y)}")
    return _split(str(path), x, y, f"{path}: {len(x)} rows of {len(inputs)} inputs"
                  + (" with labels" if y is not None else " (no labels)"))


def _split(name: str, x: np.ndarray, y: np.ndarray | None, description: str) -> DataBundle:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    cut = min(max(1, int(round(len(x) * 0.75))), max(1, len(x) - 1))  # both splits non-empty from 2 rows
    tr, te = order[:cut], order[cut:] if len(x) > 1 else order[:cut]
    return DataBundle(name, x[tr], None if y is None else y[tr], x[te], None if y is None else y[te], description)


def _npz(path: Path) -> DataBundle:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f:
                raise InputError(f"{path} has no array named 'x' (found {sorted(f.files)})")
            if f["x"].ndim == 0:
                raise InputError(f"{path}: 'x' is a scalar, not an array of inputs")
            x = f["x"].astype(np.float32)
            y = _labels(f["y"]) if "y" in f else None
            # An explicit held-out split (x_test, y_test) is used as given instead of a split of x.
            x_test = f["x_test"].astype(np.float32) if "x_test" in f else None
            y_test = _labels(f["y_test"]) if "y_test" in f else None
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path} is not a readable .npz file ({' '.join(str(e).split())[:200]})") from None
    if len(x) == 0:
        raise InputError(f"{path}: 'x' has no rows (no inputs)")
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    if x_test is not None:
        if (y is None) != (y_test is None) or (y_test is not None and len(y_test) != len(x_test)):
            raise InputError(f"{path}: x_test needs y_test of the same length exactly when x has labels y")
        if x_test.shape[1:] != x.shape[1:]:
            raise InputError(f"{path}: x_test has inputs of shape {list(x_test.shape[1:])}, x has {list(x.shape[1:])}")
        desc = f"{path}: {len(x)} training and {len(x_test)} held-out arrays" + (" with labels" if y is not None else "")
        return DataBundle(str(path), x, y, x_test, y_test, desc, held_out_given=True)
    return _split(str(path), x, y, f"{path}: {len(x)} arrays" + (" with labels" if y is not None else " (no labels)"))


def _labels(y: np.ndarray) -> np.ndarray:
    """Class ids as int64; text labels (a text recogniser's) as strings; label maps and points as they are."""
    if y.dtype.kind in "US":
        return y.astype(str)
    if y.dtype.kind in "iub" and y.ndim == 1:
        return y.astype(np.int64)
    return y


def _any_labels(y: Any) -> np.ndarray | None:
    """Labels from the API: arrays as _labels; a list of per-input arrays of different lengths as an object array."""
    if y is None:
        return None
    if isinstance(y, (list, tuple)) and y and all(hasattr(v, "shape") for v in y):
        out = np.empty(len(y), dtype=object)
        out[:] = [np.asarray(v) for v in y]
        return out
    return _labels(np.asarray(y))


def _read_image(f: Path, mode: str, size: tuple[int, int]):
    """One image, converted and resized; anything wrong with the file (unreadable, truncated, a decompression bomb
    above PIL's pixel limit) is a one-line InputError naming it."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS PIL only warns (it errors at twice that): refuse both, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                return img.convert(mode).resize(size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image {f} is too large to decode safely ({' '.join(str(e).split())[:160]})") from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error... for broken files
        raise InputError(f"cannot read image {f}: {' '.join(str(e).split())[:160] or type(e).__name__}") from None


def _image_folder(path: Path, input_shape: tuple[int, ...]) -> DataBundle:
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
            img = _read_image(f, "RGB" if c == 3 else "L", (w, h))
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
    """A DataBundle from arrays (the Python API's data=): x (N, ...) float; y class ids, strings (a text
    recogniser), per-input arrays (a detector's boxes, one (n, 5) array each) or None.

    Without x_test the arrays are split 75/25 with a fixed seed, like an .npz. The name carries a hash of the
    arrays, so a resumed run knows whether the data changed.
    """
    import hashlib

    def arr(a: object, dtype: type) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(np.asarray(a), dtype=dtype)

    x, x_test = arr(x, np.float32), arr(x_test, np.float32)
    y, y_test = _any_labels(y), _any_labels(y_test)
    if x is None or x.ndim < 2:
        raise InputError(f"data arrays must be N,... with a row per input, got shape "
                         f"{None if x is None else list(x.shape)}")
    if y is not None and len(y) != len(x):
        raise InputError(f"data: x has {len(x)} rows but y has {len(y)}")
    if x_test is not None and ((y is None) != (y_test is None) or x_test.shape[1:] != x.shape[1:]):
        raise InputError("data: x_test must match x's shape, with y_test exactly when y is given")
    h = hashlib.sha256()
    for a in (x, y, x_test, y_test):
        if a is not None:  # an object array (per-input boxes) is hashed by its items, not their addresses
            h.update(b"".join(np.asarray(v).tobytes() for v in a) if a.dtype == object else a.tobytes())
    tag = f"{name}:{h.hexdigest()[:16]}"
    label = " with labels" if y is not None else " (no labels)"
    if x_test is not None:
        return DataBundle(tag, x, y, x_test, y_test, f"{what}: {len(x)} training and {len(x_test)} held-out{label}")
    return _split(tag, x, y, f"{what}: {len(x)} inputs{label}, split 75/25 (seed 0)")
