"""Side-by-side montages for `upsample eval --save`: original | model | bicubic | input.

The layout of catid's evaluate.py (`save_side_by_side`): four panels of the HR size in a row, the
LR input at its own size in the top-left of the last one; here with a label strip above each.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14  # pixels of the strip that names the panels


def side_by_side(panels: list[tuple[str, np.ndarray]]) -> Image.Image:
    """One RGB image of the uint8 HWC `panels` (label, image) in a row, each in a cell of the
    first panel's size with its label above it."""
    h, w = panels[0][1].shape[:2]
    canvas = Image.new("RGB", (w * len(panels), h + LABEL_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (label, img) in enumerate(panels):
        canvas.paste(Image.fromarray(np.ascontiguousarray(img)), (i * w, LABEL_HEIGHT))
        draw.text((i * w + 2, 1), label, fill=(255, 255, 255), font=font)
    return canvas
