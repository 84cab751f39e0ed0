"""Upscaling files and folders of images: which files, where each one goes, and the engine.

Torch-free until a model has to be built: on a cache hit (`fastpath.FastEngine`) the images run
without torch; otherwise (or for an image the fast path does not take) `api.ImageUpscaler`, built
once. Outputs are never overwritten without `overwrite`, never written over their input, and are
written under a temporary name renamed when complete (`imageio.save_planes`).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from ..errors import UserError
from ..media.imageio import SAVE_FORMATS, is_image_path, list_images, read_planes, save_planes, storable_path
from . import fastpath


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(source file, path relative to the output folder) for files and folders (recursive)."""
    jobs = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images, skipped = list_images(p)
            for s in skipped:
                print(f"note: skipping non-image file {s}", file=sys.stderr)
            if not images:
                print(f"note: no images in {p}", file=sys.stderr)
            jobs += [(f, f.relative_to(p)) for f in images]
        elif p.is_file():
            jobs.append((p, Path(p.name)))
        else:
            raise UserError(f"input not found: {p}")
    if not jobs:
        raise UserError("no input images")
    return jobs


def scale_text(s: float) -> str:
    return str(int(s)) if float(s).is_integer() else f"{s:g}"


def output_path(out: Path, rel: Path, src: Path, suffix: str, ext: str, single_file: bool) -> Path:
    e = src.suffix.lower().lstrip(".") if ext == "same" else ext
    if e not in SAVE_FORMATS:
        e = "png"
    if single_file:
        return out
    return out / rel.parent / f"{rel.stem}{suffix}.{e}"


def is_single_file(inputs: list[str], jobs: list, out: Path) -> bool:
    """One input file and an -o that names an image file: write exactly there."""
    return (len(jobs) == 1 and len(inputs) == 1 and Path(inputs[0]).is_file()
            and is_image_path(out) and not out.is_dir())


def plan_outputs(jobs: list[tuple[Path, Path]], out: Path, *, suffix: str, ext: str, single: bool,
                 overwrite: bool) -> tuple[list[tuple[Path, Path]], int, int]:
    """(the (source, destination) pairs to write, how many are skipped because their output
    exists, how many refused because the output would replace the input). Two inputs that
    would write one file stop everything before any work."""
    todo, seen, skipped, refused = [], {}, 0, 0
    for src, rel in jobs:
        dst = output_path(out, rel, src, suffix, ext, single)
        if dst.resolve() == src.resolve():
            print(f"upsample image: error: {src}: the output would replace the input; "
                  f"use another -o or --suffix", file=sys.stderr)
            seen[dst], refused = src, refused + 1
            continue
        if dst in seen:
            raise UserError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
        if dst.exists() and not overwrite:
            print(f"note: {dst} exists, skipped (use --overwrite to replace it)", file=sys.stderr)
            skipped += 1
            continue
        todo.append((src, dst))
    return todo, skipped, refused


class Engines:
    """The fast path when the cache holds a plan for these options, and the full (torch) engine,
    built once when first needed (a fast-path miss, or an image it does not take)."""

    def __init__(self, args, *, max_memory: int | None, tile_batch: int | None, progress: bool):
        self.args, self.max_memory, self.tile_batch, self.progress = args, max_memory, tile_batch, progress
        self._full, self._lock = None, threading.Lock()
        self.fast = fastpath.FastEngine.load(args)  # a cache hit: no torch unless an image needs it
        if self.fast:
            self.name, self.scale = self.fast.name, self.fast.scale
        else:
            self.name, self.scale = self.full().up.name, self.full().scale

    def full(self):
        """`api.ImageUpscaler` for these options; it leaves a plan for the next call's fast path."""
        with self._lock:
            if self._full is None:
                from .api import ImageUpscaler, make_upscaler
                a = self.args
                up = make_upscaler(a.model, a.scale, backend=a.backend, device=a.device, half=a.half,
                                   outscale=a.outscale, precision=a.precision, threads=a.threads,
                                   allow_untrained=a.allow_untrained)
                fastpath.remember(a, up)
                self._full = ImageUpscaler(up, tile=a.tile, tile_pad=a.tile_pad, max_memory=self.max_memory,
                                           alpha_mode=a.alpha_mode, jobs=a.jobs, progress=self.progress,
                                           verbose=True, tile_batch=self.tile_batch)
            return self._full

    def upscale_file(self, src: Path, dst: Path, *, overwrite: bool, quality: int | None) -> tuple[bool, Path]:
        """(written, path): the image saved (as PNG where `dst`'s format cannot hold it), or not
        because that PNG name exists already."""
        planes = read_planes(src)
        final = storable_path(planes.mode, dst)
        if final != dst and final.exists() and not overwrite:
            return False, final
        result = self.fast.upscale_planes(planes) if self.fast else None
        if result is None:  # not a plan hit, or an image the fast path does not take
            result = self.full().upscale_planes(planes, desc=src.name)
        del planes
        return True, save_planes(result, final, quality=quality)
