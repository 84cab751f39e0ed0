"""The training images decoded once: one flat uint8 file of every image's HWC RGB pixels and a
JSON index (offset, height, width of each), memory-mapped by the trainer.

A store is named by its file list (sha1 of the resolved paths) and lives in `root` (default
`$UPSAMPLE_CACHE/train-store`, else `~/.cache/upsample/train-store`: the datasets may be
read-only). Its index records each file's size, mtime and inode; when any differs, or a
file was added or removed, the store is stale and is rebuilt (an index that does not describe its
pixels is damaged and is rebuilt too). The pixels are written first and the index last, each under
a temporary name then renamed, so an interrupted build leaves no store that looks whole. Runs
sharing the cache (a sweep, the ranks of one run) build a store once, under a lock of that store
(`.NAME.lock`) that the system drops when its holder dies; a build removes the temporary pixels
a killed build left. Where the cache folder cannot be written, each run builds its store in a temporary
folder of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..media.progress import track
from ..media.cache import entry_lock, own_dir_instead, part_dir
from ..media.imageio import atomic_output, read_rgb

FORMAT = 2  # bump when the layout of the pixels or the index changes (2: pictures upright by EXIF)


def default_root() -> Path:
    return part_dir("train-store")


def file_stamps(files: list[Path]) -> list[list]:
    """[resolved path, size, mtime_ns, inode] per file: what makes a store current (the inode sees
    a file replaced by another of the same size keeping the mtime: `cp -p`, `rsync -a`; not the
    ctime, which a chmod or a hard link moves without a change of pixels)."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError as exc:
            raise UserError(f"cannot read training image {f}: {exc.strerror}; run `upsample data check`") from None
        out.append([os.path.realpath(f), st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def store_name(files: list[Path]) -> str:
    h = hashlib.sha1("\n".join(os.path.realpath(f) for f in files).encode("utf-8", "surrogateescape"))
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


def _drop_older_formats(base: Path, name: str) -> None:
    """The stores of the same images in an older FORMAT (a store is the size of its pictures,
    188 MB for the campaign's): replaced by the one just built. A run still reading one keeps
    its mapping."""
    stem = name.rsplit("-v", 1)[0]
    for version in range(1, FORMAT):
        for suffix in (".u8", ".json"):
            with contextlib.suppress(OSError):
                (base / f"{stem}-v{version}{suffix}").unlink()


def open_store(files: list[Path], root: str | os.PathLike | None = None, *,
               progress: bool = False) -> tuple[ImageStore, bool]:
    """(the store of `files`, whether it was built now): the current one, else built."""
    base = Path(root) if root else default_root()
    name = store_name(files)
    stamps = file_stamps(files)
    built, pixels_path = False, base / f"{name}.u8"
    try:
        index, pixels_file = _current(base, name, stamps)
        if index is None:
            with entry_lock(base / f".{name}.lock", f"another run is decoding training images into {base}; waiting for it"
                             if progress else None):
                index, pixels_file = _current(base, name, stamps)  # built meanwhile by the run waited for
                if index is None:
                    index, pixels_file = build_store(files, stamps, base / f"{name}.json", pixels_path,
                                                     progress=progress)
                    built = True
                    _drop_older_formats(base, name)
    except OSError as exc:  # the folder cannot be written: read-only, full, a file where it should be
        if root:
            raise UserError(f"cannot write the training store to {base}: {exc.strerror or exc}; set "
                            "data.store_dir to a writable folder") from None
        own = own_dir_instead("train-store", "the training store", base, exc, progress)
        pixels_path = own / f"{name}.u8"
        index, pixels_file = build_store(files, stamps, own / f"{name}.json", pixels_path, progress=progress)
        built = True
    with pixels_file:  # mapped from the file read or written, whatever happens to its name meanwhile
        pixels = np.memmap(pixels_file, dtype=np.uint8, mode="c") if index["total"] else \
            np.zeros(0, dtype=np.uint8)
    shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
    return ImageStore(pixels=pixels, offsets=np.asarray(index["offsets"], dtype=np.int64),
                      heights=shapes[:, 0].copy(), widths=shapes[:, 1].copy(), path=pixels_path), built


def _current(base: Path, name: str, stamps: list[list]):
    """(index, open pixels file) of the whole, current store `name`, else (None, None)."""
    index = _read_index(base / f"{name}.json")
    if index is None or index["files"] != stamps:
        return None, None
    try:
        pixels = open(base / f"{name}.u8", "rb")
    except OSError:
        return None, None
    if os.fstat(pixels.fileno()).st_size != index["total"]:
        pixels.close()
        return None, None
    return index, pixels


def _read_index(path: Path) -> dict | None:
    """The index at `path` if it is one of this format whose entries agree with each other."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        if not (isinstance(index, dict) and index.get("format") == FORMAT):
            return None
        files, offsets, shapes, total = index["files"], index["offsets"], index["shapes"], index["total"]
        at = 0
        for o, (h, w) in zip(offsets, shapes, strict=True):
            if o != at or not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
                return None
            at += h * w * 3
        return index if isinstance(files, list) and len(files) == len(offsets) and total == at else None
    except (KeyError, TypeError, ValueError):
        return None


DEAD_AFTER_S = 600  # a live build writes its part steadily; one untouched this long was killed


def _remove_dead_parts(folder: Path, name: str) -> None:
    """Remove the temporary pixels of builds of `name` that were killed (SIGKILL, the OOM killer,
    a power cut): a store's size each. A live build holds a lock on its file and writes to it (a
    machine whose locks another does not see - NFS with local locks - still is not removed)."""
    for part in folder.glob(f".{name}.u8.*.part"):
        try:
            if time.time() - part.stat().st_mtime < DEAD_AFTER_S:
                continue
            with open(part, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                part.unlink()
        except OSError:  # being written (BlockingIOError), or gone meanwhile
            pass


def build_store(files: list[Path], stamps: list[list], index_path: Path, pixels_path: Path, *,
                progress: bool):
    """Decode `files` into `pixels_path` and write the index: one image at a time, so memory
    stays that of one image. Returns (the index, the pixels file open for reading)."""
    _remove_dead_parts(pixels_path.parent, pixels_path.stem)
    offsets, shapes, total, pixels = [], [], 0, None
    try:
        with atomic_output(pixels_path) as tmp, open(tmp, "wb") as out:
            try:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # alive: not for _remove_dead_parts
            except OSError:  # a file system without locks: none is removed there either
                pass
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
            pixels = open(tmp, "rb")
        index = {"format": FORMAT, "files": stamps, "offsets": offsets, "shapes": shapes, "total": total}
        with atomic_output(index_path) as tmp:
            tmp.write_text(json.dumps(index))
    except BaseException:
        if pixels is not None:
            pixels.close()
        raise
    return index, pixels
