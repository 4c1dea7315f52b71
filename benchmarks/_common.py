"""Shared benchmark helpers: the real PP-OCR text-direction classifier and its labelled text-line data.

The model ships inside the `rapidocr-onnxruntime==1.4.4` wheel on PyPI: it is fetched once with `pip download`
(benchmarks and tests may use models that ship inside PyPI wheels; edgekit itself never downloads anything) and
cached. The data are text lines rendered with the DejaVu fonts that matplotlib ships, upright (label 0) or rotated
180 degrees (label 1), preprocessed as PaddleOCR's classifier expects: resized to height 48 keeping the aspect ratio,
width at most 192, `(x / 255 - 0.5) / 0.5`, padded with zeros on the right to width 192.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PPOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
PPOCR_CLS_MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
CLS_SHAPE = (1, 3, 48, 192)

# Words and fragments a text line on a document, a sign or a receipt might hold (Latin script: the DejaVu fonts
# carry no CJK glyphs).
_WORDS = ("invoice total amount date paid receipt order number customer address street city phone email price "
          "quantity item tax discount balance due account bank transfer reference station platform exit entrance "
          "open closed monday friday sunday january march october warning danger caution keep door left right north "
          "south meeting room floor level office hotel coffee bread milk water apple orange rice sugar salt").split()
_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf",
          "DejaVuSerif-Bold.ttf")


def cache_dir() -> Path:
    d = Path(os.environ.get("EDGEKIT_BENCH_CACHE", Path.home() / ".cache" / "edgekit-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def ppocr_cls_onnx() -> Path:
    """The path of `ch_ppocr_mobile_v2.0_cls_infer.onnx`, fetched from its PyPI wheel once and cached."""
    dest = cache_dir() / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PPOCR_WHEEL, "-d", d],
                       check=True, capture_output=True)
        wheel = next(Path(d).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read(PPOCR_CLS_MEMBER)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def _font_paths() -> list[Path]:
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [root / f for f in _FONTS if (root / f).is_file()]


def _line_text(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        r = rng.random()
        if r < 0.6:
            w = str(rng.choice(_WORDS))
            parts.append(w.capitalize() if rng.random() < 0.3 else (w.upper() if rng.random() < 0.15 else w))
        elif r < 0.85:
            parts.append(str(int(rng.integers(0, 100000))))
        else:
            parts.append(f"{rng.integers(1, 999)}.{rng.integers(0, 99):02d}")
    return " ".join(parts)


def render_line(text: str, font_path: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    """One text line as an HxWx3 uint8 image: dark text on a light, slightly varied background."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    bg = tuple(int(v) for v in rng.integers(150, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 110, 3))
    img = Image.new("RGB", (max(w, 8), max(h, 8)), bg)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=fg)
    # Photographed text: a small skew, blur, and a crop that may cut the line's ends or top and bottom.
    from PIL import ImageFilter

    img = img.rotate(float(rng.normal(0, 2.0)), resample=Image.BILINEAR, expand=False, fillcolor=bg)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.6))))
    cw, ch = img.size
    x0, x1 = int(rng.integers(0, max(1, cw // 8))), cw - int(rng.integers(0, max(1, cw // 8)))
    y0, y1 = int(rng.integers(0, max(1, ch // 6))), ch - int(rng.integers(0, max(1, ch // 6)))
    arr = np.asarray(img.crop((x0, y0, x1, y1)), dtype=np.float32)
    arr += rng.normal(0, 12.0, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def preprocess(img: np.ndarray, shape: tuple[int, int, int] = CLS_SHAPE[1:]) -> np.ndarray:
    """PaddleOCR's classifier preprocessing (ClsResizeImg): CHW float32."""
    from PIL import Image

    c, out_h, out_w = shape
    h, w = img.shape[:2]
    resized_w = min(out_w, int(math.ceil(out_h * w / float(h))))
    resized = np.asarray(Image.fromarray(img).resize((resized_w, out_h), Image.BILINEAR), dtype=np.float32)
    resized = resized.transpose(2, 0, 1) / 255.0
    resized = (resized - 0.5) / 0.5
    out = np.zeros((c, out_h, out_w), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


def text_lines(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` rendered text lines (N, 3, 48, 192) float32 and labels (0 upright, 1 rotated 180 degrees), half each."""
    rng = np.random.default_rng(seed)
    fonts = _font_paths()
    xs, ys = [], []
    for i in range(n):
        img = render_line(_line_text(rng), fonts[int(rng.integers(len(fonts)))], int(rng.integers(9, 36)), rng)
        label = i % 2
        if label:
            img = img[::-1, ::-1].copy()
        xs.append(preprocess(img))
        ys.append(label)
    order = rng.permutation(n)
    return np.stack(xs)[order], np.asarray(ys, dtype=np.int64)[order]


def write_text_lines_npz(path: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """An .npz that `edgekit --data` reads: x/y (train) and x_test/y_test (held out), disjoint seeds."""
    x, y = text_lines(n_train, seed)
    xt, yt = text_lines(n_test, seed + 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    return path


if __name__ == "__main__":
    import onnxruntime as ort

    model = ppocr_cls_onnx()
    x, y = text_lines(400, seed=1000)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]).argmax(1)
    print({"model": str(model), "lines": len(x), "ort_accuracy": float((pred == y).mean())})
