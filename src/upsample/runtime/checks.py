"""Precision checks: how far a faster graph's output is from fp32 on a probe image, measured once
per weights and remembered in the cache (so the choice costs nothing on later runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.colour import rgb_to_ycbcr
from ..media.imageio import atomic_write_bytes
from .cache import cache_dir

TOLERANCE = 1.0 / 255.0  # largest difference from fp32 that a half precision may make
PROBE = Path(__file__).resolve().parents[1] / "assets" / "probe.png"


def probe_image(channels: int = 3, side: int = 96) -> torch.Tensor:
    """A crop of the packaged sample photo-like image as float NCHW RGB in [0, 1]."""
    from PIL import Image
    with Image.open(PROBE) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    h, w = arr.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    t = torch.from_numpy(np.ascontiguousarray(arr[y:y + side, x:x + side])).permute(2, 0, 1)[None]
    return t if channels == 3 else rgb_to_ycbcr(t)[:, :1]


def checks_path(key: str) -> Path:
    return cache_dir() / f"{key}.checks.json"


def remembered_check(key: str, what: str, measure) -> tuple[float, bool]:
    """(the value of `what` for the weights `key` - a difference from fp32, or which variant ran
    fastest -, whether `measure()` made it now): read from the cache, else measured and stored."""
    path = checks_path(key)
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        done = {}
    fresh = what not in done
    if fresh:
        done[what] = float(measure())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(done, indent=1).encode())
        except OSError:
            pass  # an unwritable cache only costs the check next time
    return done[what], fresh
