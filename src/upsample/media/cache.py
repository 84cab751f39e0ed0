"""The one cache folder of upsample: `$UPSAMPLE_CACHE`, else `$XDG_CACHE_HOME/upsample`, else
`~/.cache/upsample`. The export cache, the training store and the video-frame cache are folders
in it (the datasets and videos they are made from may lie on read-only media)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The folders of the cache, and what each holds (`upsample cache info|clear`)
PARTS = {"export": "ONNX/IR exports, OpenVINO compiled blobs, precision checks, image plans",
         "train-store": "training images decoded once",
         "video-frames": "frames sampled from training videos"}


def cache_root() -> Path:
    root = os.environ.get("UPSAMPLE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                    Path.home() / ".cache") / "upsample"
    return Path(root)


def part_dir(part: str) -> Path:
    return cache_root() / part


def part_files(part: str) -> list[Path]:
    root = part_dir(part)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def clear_part(part: str) -> tuple[int, int]:
    """Empty one folder of the cache; (files removed, bytes freed). A training run that has a
    store mapped keeps reading it (the data stay until it ends); the next one decodes again."""
    files = part_files(part)
    size = sum(p.stat().st_size for p in files)
    root = part_dir(part)
    if root.is_symlink():  # the part moved elsewhere (another disk): empty it there, keep the link
        for entry in root.iterdir() if root.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    elif root.is_dir():
        shutil.rmtree(root)
    return len(files), size
