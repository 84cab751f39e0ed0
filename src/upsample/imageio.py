"""Image file edges: listing, reading to uint8 arrays, and atomic writing (temp name + rename)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

# Extensions Pillow can read that we treat as images when scanning folders.
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm",
              ".gif", ".tga", ".avif", ".jxl", ".jp2", ".qoi"}


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """Image files under `folder` (sorted) and the non-image files that were skipped."""
    root = Path(folder)
    if not root.exists():
        raise UserError(f"folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a folder: {root}")
    files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    images = [p for p in files if is_image_path(p)]
    skipped = [p for p in files if not is_image_path(p)]
    return images, skipped


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image, turning every decoder failure into one UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"file not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read image {p}: {exc}; the file is corrupt or not an image") from None
    return img


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 HWC RGB array of an image file (gray and palette images are expanded to RGB)."""
    img = open_image(path)
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))
    return np.asarray(img.convert("RGB"))


def atomic_save(img: Image.Image, path: str | os.PathLike, **save_kwargs) -> None:
    """Save to a temporary file beside `path`, then rename: a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = save_kwargs.pop("format", None) or Image.registered_extensions().get(path.suffix.lower())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".part", dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp, format=fmt, **save_kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
