"""Rendered text pages with their ground truth, and character accuracy against it, for the RapidOCR client benchmark.

A page is a 640x480 photograph-like document: 6 to 10 lines of words and numbers in the DejaVu fonts matplotlib ships
(Latin script), dark on a light, slightly varied background, sizes 16 to 34 px, a small skew, blur and sensor noise.
Standard library, numpy and Pillow only: this module runs in the client's own environment too (benchmarks/.ocr-venv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PAGE_W, PAGE_H = 640, 480
WORDS = ("invoice total amount date paid receipt order number customer address street city phone email price "
         "quantity item tax discount balance due account bank transfer reference station platform exit entrance "
         "open closed monday friday sunday january march october warning danger caution keep door left right north "
         "south meeting room floor level office hotel coffee bread milk water apple orange rice sugar salt").split()
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf")


def line_text(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(int(rng.integers(2, 6))):
        r = rng.random()
        if r < 0.65:
            w = str(rng.choice(WORDS))
            parts.append(w.capitalize() if rng.random() < 0.3 else (w.upper() if rng.random() < 0.1 else w))
        elif r < 0.85:
            parts.append(str(int(rng.integers(0, 100000))))
        else:
            parts.append(f"{rng.integers(1, 999)}.{rng.integers(0, 99):02d}")
    return " ".join(parts)


def render_page(seed: int, font_dir: Path) -> tuple[np.ndarray, list[str], list[tuple[int, int, int, int]]]:
    """(an HxWx3 uint8 BGR page, as OpenCV reads images; its lines, top to bottom; each line's box x0, y0, x1, y1
    in page pixels)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (PAGE_W, PAGE_H), bg)
    draw = ImageDraw.Draw(img)
    lines, boxes, y = [], [], int(rng.integers(10, 30))
    while len(lines) < 10:
        size = int(rng.integers(16, 35))
        font = ImageFont.truetype(str(font_dir / FONTS[int(rng.integers(len(FONTS)))]), size)
        text = line_text(rng)
        left, top, right, bottom = font.getbbox(text)
        while right - left > PAGE_W - 40 and " " in text:  # keep the line on the page
            text = text.rsplit(" ", 1)[0]
            left, top, right, bottom = font.getbbox(text)
        if y + bottom - top > PAGE_H - 15:
            break
        x = int(rng.integers(15, max(16, PAGE_W - 20 - (right - left))))
        fg = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text((x - left, y - top), text, font=font, fill=fg)
        lines.append(text)
        boxes.append((x, y, x + right - left, y + bottom - top))
        y += bottom - top + int(rng.integers(14, 40))
    img = img.rotate(float(rng.normal(0, 0.8)), resample=Image.BILINEAR, expand=False, fillcolor=bg)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 0.8))))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6.0, (PAGE_H, PAGE_W, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)[:, :, ::-1].copy(), lines, boxes


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def page_text(result: list | None) -> str:
    """RapidOCR's result ([box, text, score] per line) read top to bottom, left to right, one space apart."""
    if not result:
        return ""
    rows = sorted(result, key=lambda r: (round(min(p[1] for p in r[0]) / 12), min(p[0] for p in r[0])))
    return " ".join(r[1].strip() for r in rows)


def char_errors(predicted: str, lines: list[str]) -> tuple[int, int]:
    """(edit distance between the page's text and its ground truth, characters in the ground truth); spaces are
    not counted (a recogniser that drops one between two words read the words)."""
    truth = "".join(" ".join(lines).split())
    return edit_distance("".join(predicted.split()), truth), len(truth)
