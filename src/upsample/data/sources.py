"""Where a run's training images come from: `data.train`'s folders, .txt file lists and video
files, split into training and validation images, and the seeded `data.max_images` subset.

A video file is decoded once (PyAV, `prepare.video_frames`: every `data.video_every`-th frame)
into a frame cache, one PNG per frame in `$UPSAMPLE_CACHE/video-frames/<name>-<key>/` (else
`~/.cache/upsample/video-frames`: the videos may lie on read-only media). The key is the video's
resolved path, size, mtime, inode and K, so a changed video is decoded again (also one replaced
by a copy that kept the size and mtime: `cp -p`, `rsync -t`); the frame list
`frames.txt` is written last, so an interrupted decode is redone, never half used. From then on
its frames are training images like any other file: whatever reads files (PairDataset, the
store) reads them, and the validation split holds out single frames by hash. Runs sharing the
cache decode a video one at a time (a lock the system drops when its holder dies): the others wait,
then read its frames. Where the cache folder cannot be written, a run decodes into a temporary
folder of its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..media.progress import track
from ..media.cache import entry_lock, own_dir_instead, part_dir
from ..media.imageio import atomic_output, atomic_save, header_size, is_image_path, list_images
from .pairs import (collect_images, folder_key, hidden_hint, missing_text, name_bytes, one_name_each, read_file_list,
                    relative_hint, train_val_files)
from .prepare import is_video_path, note_not_images, video_frames, without_lr

FRAME_LIST = "frames.txt"  # a cache folder's frame files, one a line; written last
# Bumped when decoding changes what a frame's pixels are, so that caches of the old decode are not
# reused ("|rgb2": `media.video.frame_rgb`, converted as `upsample video` converts)
FRAMES_VERSION = "|rgb2"


def frames_root() -> Path:
    return part_dir("video-frames")


def frame_folder(video: Path, every: int, root: Path) -> Path:
    """The cache folder of `video`'s every `every`-th frame: a changed file gets a new one."""
    st = video.stat()
    stamp = f"{os.path.realpath(video)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{every}{FRAMES_VERSION}"
    return root / f"{video.stem}-{hashlib.sha1(name_bytes(stamp)).hexdigest()[:16]}"


def cached_frames(folder: Path) -> list[Path] | None:
    """The frames of a complete cache folder, else None."""
    try:
        names = (folder / FRAME_LIST).read_text().split()
    except OSError:
        return None
    files = [folder / n for n in names]
    return files if names and all(f.is_file() for f in files) else None


def video_frame_files(video: Path, every: int, root: Path | None = None, *,
                      progress: bool = False) -> list[Path]:
    """PNG files of every `every`-th frame of `video`, decoded now unless the cache has them."""
    folder = frame_folder(video, every, Path(root) if root else frames_root())
    files = cached_frames(folder)
    if files is not None:
        return files
    try:
        waiting = f"another run is decoding {folder.name}; waiting for it" if progress else None
        with entry_lock(folder.parent / f".{folder.name}.lock", waiting):
            # decoded meanwhile by the run waited for, else now
            files = cached_frames(folder) or _decode_frames(video, every, folder, progress)
    except OSError as exc:  # a read-only or full cache, a file where its folder should be
        folder = own_dir_instead("video-frames", "video frames", folder.parent, exc, progress) / folder.name
        try:
            files = cached_frames(folder) or _decode_frames(video, every, folder, progress)
        except OSError as exc:
            raise UserError(f"cannot write video frames to {folder}: {exc.strerror}; set UPSAMPLE_CACHE "
                            "to a writable folder") from None
    return files


# PNG at compress_level 1 of video frames: about half their raw RGB bytes (measured 0.4-0.7)
PNG_SHARE = 0.6


def frames_bytes(video: Path, every: int) -> tuple[int, int]:
    """(frames, bytes) the frame cache of `video` at every `every`-th frame will about take, from
    the container's header (frame count, else duration x rate); (0, 0) where it does not say."""
    import av

    from ..media.video import frame_count, main_video_stream
    try:
        with av.open(str(video)) as container:
            count = frame_count(container) or 0
            codec = main_video_stream(container).codec_context
            w, h = codec.width, codec.height
    except (av.error.FFmpegError, ValueError, TypeError):  # no video stream: max() of none
        return 0, 0  # decoding says what is wrong
    kept = -(-count // every)
    return kept, int(kept * w * h * 3 * PNG_SHARE)


def check_frames_fit(video: Path, every: int, folder: Path, progress: bool) -> int:
    """Before decoding: a UserError when the frames would not fit the cache's free space (every
    frame of a long 1080p video is tens of GB), a note when they take more than 2 GB. Returns the
    frames to keep that the header announces (0: it does not say)."""
    count, size = frames_bytes(video, every)
    if not size:
        return count
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    fewer = max(2, every * 2, -(-size * 2 // max(free, 1)) * every)
    if size > free * 0.9:
        raise UserError(f"data.train: {video.name}'s {count} frames (every {every}) would take ~{size / 1e9:.1f} "
                        f"GB of frame cache in {folder.parent}, where {free / 1e9:.1f} GB are free; set "
                        f"data.video_every = {fewer} (every {fewer}-th frame), or UPSAMPLE_CACHE to a larger disk")
    if size > 2e9 and progress:
        print(f"note: caching {count} frames of {video.name} (~{size / 1e9:.1f} GB in {folder.parent}); "
              "data.video_every = K keeps every K-th frame only", file=sys.stderr)
    return count


def note_cut_short(video: Path, every: int, kept: int, announced: int) -> None:
    """A note where far fewer frames decoded than the header announces: a video cut short (an
    interrupted copy or download) decodes up to the cut without an error, and the run trained on
    part of it without a word. (An estimate from the duration can be a frame or two off.)"""
    if announced - kept >= 2 and kept < 0.9 * announced:
        every_k = f" (every {every}-th)" if every > 1 else ""
        print(f"note: data.train: {video} decoded to {kept} frames{every_k} of the {announced} its header "
              "announces: the file may be cut short (copy it again); training on the frames it has", file=sys.stderr)


def _decode_frames(video: Path, every: int, folder: Path, progress: bool) -> list[Path]:
    """Decode every `every`-th frame of `video` into `folder`, its frame list last; the frames."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    announced = check_frames_fit(video, every, folder, progress)
    for _ in range(2):  # again if the folder was emptied meanwhile (`upsample cache clear all`)
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        try:
            for n, frame in track(video_frames(video, every), progress, desc=f"decoding {video.name}",
                                  unit="frame"):
                names.append(f"f{n:06d}.png")
                # compress_level 1: these are a cache, read back many times and written once
                atomic_save(Image.fromarray(np.ascontiguousarray(frame)), folder / names[-1], compress_level=1)
        except UserError as exc:  # not a video, or a broken one: which file, and what to do
            raise UserError(f"data.train: {exc}; remove the file from data.train (or from its folder)") from None
        if not names:
            raise UserError(f"data.train: {video} has no video frames to train on")
        if progress:
            note_cut_short(video, every, len(names), announced)
        with atomic_output(folder / FRAME_LIST) as tmp:
            tmp.write_text("".join(n + "\n" for n in names))
        files = cached_frames(folder)
        if files is not None:
            return files
    raise UserError(f"the frames of {video} were removed from {folder} while they were decoded; run again")


def collect_sources(train: list[str], *, video_every: int = 1, frames: Path | None = None,
                    progress: bool = False) -> list[tuple[Path, str]]:
    """(image file, split key) of every training image of `data.train`, in its order: the
    images of folders and .txt lists (`pairs.collect_images`) and the frames of video files."""
    if video_every < 1:
        raise UserError(f"data.video_every must be >= 1 (every K-th frame), got {video_every}")
    out = []
    for src in train:
        p = Path(src)
        if p.is_dir():
            out += _folder_sources(p, video_every, frames, progress)
        elif p.is_file() and not is_video_path(p) and p.suffix.lower() != ".txt":
            what = "an image file" if is_image_path(p) else "neither a folder, a .txt file list nor a video"
            raise UserError(f"data.train: {p} is {what}; data.train takes folders of images, .txt file "
                            "lists (`upsample data split`) and video files: name its folder, or list it in a .txt file")
        elif p.suffix.lower() == ".txt":
            out += _list_sources(p, video_every, frames, progress)
        elif not is_video_path(p):
            out += collect_images([src], "data.train")
        elif not p.is_file():
            raise UserError(f"data.train: video not found: {p}{relative_hint(p)}")
        else:
            out += [(f, f"{p.name}/{f.name}") for f in
                    video_frame_files(p, video_every, frames, progress=progress)]
    seen: set[Path] = set()  # a folder named twice (d and d/, or inside another): each file once
    return [(f, key) for f, key in out if not (f.resolve() in seen or seen.add(f.resolve()))]


def _folder_sources(folder: Path, video_every: int, frames: Path | None, progress: bool
                    ) -> list[tuple[Path, str]]:
    """(file, split key) of a folder's images and its videos' frames (recursive), as `data
    prepare` takes a folder of both (the videos were left out: "no images in" a folder of them)."""
    images, others = list_images(folder)
    images = one_name_each(folder, images)
    videos = one_name_each(folder, [f for f in others if is_video_path(f) and f.is_file()])
    if not images and not videos:
        raise UserError(f"data.train: no images or videos in {folder}{hidden_hint(folder)}")
    if progress:  # the notes once, from the process that shows progress (rank 0)
        note_not_images(folder, [f for f in others if f not in videos], "data.train")
    images = without_lr(folder, images, "data.train", note=progress)
    if not images and not videos:
        raise UserError(f"data.train: {folder} holds only LR images; name the folder of the HR images "
                        "(training makes each LR from its HR)")
    out = [(f, folder_key(folder, f)) for f in images]
    for video in videos:
        out += [(f, f"{folder_key(folder, video)}/{f.name}")
                for f in video_frame_files(video, video_every, frames, progress=progress)]
    return out


def _list_sources(listing: Path, video_every: int, frames: Path | None, progress: bool
                  ) -> list[tuple[Path, str]]:
    """(file, split key) of a .txt list's images and its videos' frames, as `data prepare` cuts
    both (a listed video was left out without a word); other entries are named in a note."""
    files = read_file_list(listing)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"data.train: {missing_text(missing, listing)}")
    others = [f for f in files if not (is_image_path(f) or is_video_path(f))]
    if others and progress:
        print(f"note: data.train: {len(others)} entries of {listing} are neither images nor videos and are "
              f"left out, e.g. {others[0]}", file=sys.stderr)
    out = [(f, f"{listing.stem}/{f.name}") for f in files if is_image_path(f)]  # as collect_images keys them
    for video in (f for f in files if is_video_path(f)):
        out += [(f, f"{listing.stem}/{video.name}/{f.name}")
                for f in video_frame_files(video, video_every, frames, progress=progress)]
    if not out:
        raise UserError(f"data.train: no images or videos in {listing}")
    return out


def seeded_subset(items: list[tuple[Path, str]], n: int, seed: int) -> list[tuple[Path, str]]:
    """`n` of `items` (all when n is 0 or more than there are), in their order: those whose keys
    have the smallest sha1(seed:key), a random sample fixed by the seed that, like hash_split,
    changes only by the new images that rank into it when images are added."""
    if not n or n >= len(items):
        return list(items)
    rank = sorted(range(len(items)),
                  key=lambda i: hashlib.sha1(name_bytes(f"{seed}:subset:{items[i][1]}")).hexdigest())
    chosen = set(rank[:n])
    return [it for i, it in enumerate(items) if i in chosen]


def _head(path: Path) -> bytes:
    """The first 64 KiB of `path` (nothing where it cannot be read: read_file_list says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(65536)
    except OSError:
        return b""


def check_val_list(path: Path) -> None:
    """A UserError, before any image is decoded, where data.val_list is no list of existing files:
    an image given for the list was a ValueError traceback, a missing entry an unexplained "file
    not found" after the training images were decoded."""
    if path.is_file() and (is_image_path(path) or is_video_path(path) or b"\0" in _head(path)):  # not text
        raise UserError(f"data.val_list: {path} is no file list; give a .txt of image paths, one a line "
                        "(`upsample data split FOLDER` writes val.txt)")
    try:
        files = read_file_list(path)
    except UserError as exc:
        raise UserError(f"data.val_list: {exc}") from None
    except OSError as exc:  # permission denied: an input, not the output the CLI's handler suspects
        raise UserError(f"data.val_list: cannot read {path}: {exc.strerror or exc}") from None
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"data.val_list: {missing_text(missing, path)}")
    if not files:
        raise UserError(f"data.val_list: no files in {path}")
    others = [f for f in files if is_video_path(f) or not (is_image_path(f) or header_size(f))]  # by header too
    if others:  # read as pictures after the training images were decoded: refused then, minutes later
        raise UserError(f"data.val_list: {len(others)} entries of {path} are not pictures, e.g. {others[0]}: "
                        "validation reads pictures; list image files only")


def training_images(train: list[str], *, val_list: str = "", val_fraction: float = 0.05,
                    seed: int = 0, video_every: int = 1, max_images: int = 0,
                    frames: Path | None = None, progress: bool = False, split_seed: int | None = None
                    ) -> tuple[list[Path], list[Path]]:
    """(training image files, validation image files) of a config's [data] section: sources
    listed, validation held out (data.val_list, else the data.val_fraction hash split), then at
    most `max_images` training images, a sample seeded by `seed` (the run's train.seed). The
    split's hash takes `split_seed` where given, else `seed`."""
    if val_list:
        check_val_list(Path(val_list))
    items = collect_sources(train, video_every=video_every, frames=frames, progress=progress)
    tr, val = train_val_files(train, val_list, val_fraction, seed if split_seed is None else split_seed,
                              items=items)
    if progress and not val_list and val and round(len(items) * val_fraction) == 0:
        # hash_split holds out at least one image: of a few, a far larger share than asked for
        print(f"note: data.val_fraction {val_fraction:g} of {len(items)} images holds out {len(val)} for "
              f"validation (at least one is), leaving {len(tr)} to train on; data.val_fraction = 0 trains "
              "on all of them (without validation or best.safetensors)", file=sys.stderr)
    keys = dict(items)
    picked = seeded_subset([(f, keys[f]) for f in tr], max_images, seed)
    return [f for f, _ in picked], val
