"""The training images decoded once: one flat uint8 file of every image's HWC RGB pixels and a
JSON index (offset, height, width of each), memory-mapped by the trainer.

A store is named by its file list (sha1 of the resolved paths) and lives in `root` (default
`$UPSAMPLE_CACHE/train-store`, else `~/.cache/upsample/train-store`: the datasets may be
read-only). Its index records each file's size and mtime; when any differs, or a file was added
or removed, the store is stale and is rebuilt. The pixels are written first and the index last,
each under a temporary name then renamed, so an interrupted build leaves no store that looks
whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..media.progress import track
from ..media.cache import part_dir
from ..media.imageio import atomic_output, read_rgb

FORMAT = 1  # bump when the layout of the pixels or the index changes


def default_root() -> Path:
    return part_dir("train-store")


def file_stamps(files: list[Path]) -> list[list]:
    """[resolved path, size, mtime_ns] per file: what makes a store current."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError as exc:
            raise UserError(f"cannot read training image {f}: {exc.strerror}; run `upsample data check`") from None
        out.append([os.path.realpath(f), st.st_size, st.st_mtime_ns])
    return out


def store_name(files: list[Path]) -> str:
    h = hashlib.sha1("\n".join(os.path.realpath(f) for f in files).encode())
    return f"{h.hexdigest()[:20]}-v{FORMAT}"


@dataclass
class ImageStore:
    """The decoded images: `pixels` (flat uint8, memory-mapped copy-on-write) and, per image,
    its `offsets` into it and `heights`, `widths` (int64 arrays)."""
    pixels: np.ndarray
    offsets: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    path: Path

    def __len__(self) -> int:
        return len(self.offsets)

    def image(self, i: int) -> np.ndarray:
        h, w, o = int(self.heights[i]), int(self.widths[i]), int(self.offsets[i])
        return self.pixels[o:o + h * w * 3].reshape(h, w, 3)


def open_store(files: list[Path], root: str | os.PathLike | None = None, *,
               progress: bool = False) -> tuple[ImageStore, bool]:
    """(the store of `files`, whether it was built now): the current one, else built."""
    base = Path(root) if root else default_root()
    name = store_name(files)
    index_path, pixels_path = base / f"{name}.json", base / f"{name}.u8"
    stamps = file_stamps(files)
    built = False
    index = _read_index(index_path)
    if index is None or index["files"] != stamps or not _pixels_complete(pixels_path, index):
        index = build_store(files, stamps, index_path, pixels_path, progress=progress)
        built = True
    pixels = np.memmap(pixels_path, dtype=np.uint8, mode="c") if index["total"] else \
        np.zeros(0, dtype=np.uint8)
    shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
    return ImageStore(pixels=pixels, offsets=np.asarray(index["offsets"], dtype=np.int64),
                      heights=shapes[:, 0].copy(), widths=shapes[:, 1].copy(), path=pixels_path), built


def _read_index(path: Path) -> dict | None:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("format") == FORMAT else None


def _pixels_complete(path: Path, index: dict) -> bool:
    try:
        return path.stat().st_size == index["total"]
    except OSError:
        return False


def build_store(files: list[Path], stamps: list[list], index_path: Path, pixels_path: Path, *,
                progress: bool) -> dict:
    """Decode `files` into `pixels_path` and write the index: one image at a time, so memory
    stays that of one image."""
    offsets, shapes, total = [], [], 0
    with atomic_output(pixels_path) as tmp, open(tmp, "wb") as out:
        for f in track(files, progress, desc="decoding training images", unit="image"):
            try:
                img = np.ascontiguousarray(read_rgb(f))
            except (OSError, SyntaxError, ValueError) as exc:
                raise UserError(f"cannot read image {f}: {exc}; run `upsample data check`") from None
            offsets.append(total)
            shapes.append(list(img.shape[:2]))
            out.write(img.tobytes())
            total += img.nbytes
        out.flush()
        os.fsync(out.fileno())
    index = {"format": FORMAT, "files": stamps, "offsets": offsets, "shapes": shapes, "total": total}
    with atomic_output(index_path) as tmp:
        tmp.write_text(json.dumps(index))
    return index
