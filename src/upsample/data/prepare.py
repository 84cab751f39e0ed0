"""Making training images: `upsample data prepare|check|clean|split` (cli/data.py) calls these.

  prepare  cut image folders and video files into square HR PNG crops (resumable, atomic writes)
  check    report unreadable/truncated files, too-small images, grayscale/CMYK/alpha, duplicates
  clean    the same, moving offenders into a quarantine folder (never deleting)
  split    deterministic train/validation file lists, so validation never touches the benchmarks

The training pairs made from these images are in `pairs.py`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import UserError, one_line
from ..media.imageio import (atomic_save, header_size, is_image_path, list_images, max_pixels, open_image,
                             read_rgb, skip_reason)
from ..media.animation import image_frame_count
from ..media.progress import counted, progress_bar, track
from .pairs import (NAMES_TEXT, file_list_text, hidden_hint, missing_text, one_name_each, outside, read_file_list,
                    split_copies_together, write_file_list)

VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv",
              ".wmv", ".y4m"}
MANIFEST = ".prepare-done"


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


# --- LR files beside the HR ------------------------------------------------------------------
# Releases of benchmark and training sets keep the LR inputs (and other methods' results) beside
# the HR: DIV2K / EDSR / SwinIR `HR/0001.png` + `LR_bicubic/X2/0001x2.png` (DIV2K:
# `DIV2K_train_HR/` + `DIV2K_train_LR_bicubic/X2/`), BasicSR / MMEditing `GTmod12/` + `LRbicx2/`,
# RCAN `LR/LRBI/.../baby_LRBI_x2.png`, the SelfExSR release's `image_SRF_2/img_001_SRF_2_HR.png`
# beside `_LR`, `_bicubic`, `_SRCNN` ... Read as HR images they give wrong numbers (eval) or
# train on LR pictures (train, prepare): `lr_files` finds them so that they can be left out.

LR_FOLDER = re.compile(r"(?i)^(?:.*[_\- ])?(?:lr|lq|low[_\- ]?res(?:olution)?)"
                       r"(?:[_\- ]?(?:bicubic|bic|unknown|mild|difficult|wild|realistic|bi|bd|dn|x?\d+))*$")
# a name's LR mark: NAME_LR, NAME_LQ, NAME_LRBI_x2, NAME_LR2, NAMEx2 (DIV2K's 0001x2)
LR_MARK = re.compile(r"(?i)(?:[_\- ](?:lr|lq)(?:bi|bd|dn|bicubic)?(?:[_\- ]?x?\d)?|(?<=\d)x\d|[_\- ]x\d)$")
SRF_HR = re.compile(r"(?i)^(.+_srf_\d+)_hr$")  # the SelfExSR release: img_001_SRF_2_HR beside _LR, _SRCNN ...
MAX_FACTOR = 8


def lr_folder_name(folder: Path) -> str | None:
    """The name that marks `folder` (or the parent of a scale folder: `LR_bicubic/X2`) as a folder
    of LR images."""
    parts = Path(os.path.abspath(folder)).parts[-2:]
    if len(parts) == 2 and not re.match(r"(?i)^x?\d+$", parts[1]):
        parts = parts[1:]
    return next((d for d in reversed(parts) if LR_FOLDER.match(d)), None)


def _smaller_by(lr: Path, hr: Path) -> int | None:
    """k (2..MAX_FACTOR) where `lr` is `hr` shrunk k times (each side within k pixels: the HR may
    not have been cropped to a multiple), else None: a name alone is no proof (photo_lrg, icon_x2)."""
    a, b = header_size(lr), header_size(hr)  # unreadable: check reports those
    if a is None or b is None:
        return None
    return next((k for k in range(2, MAX_FACTOR + 1)
                 if all(0 <= big - k * small < k for small, big in zip(a, b))), None)


def lr_files(root: Path, images: list[Path]) -> dict[Path, str]:
    """{file: why} of the `images` under `root` that are LR copies of another of them, by name and
    size: NAME_LR / NAMEx2 beside NAME (or NAME_HR) in its folder, an image of an LR sub-folder
    (LR_bicubic/X2/0001x2, LRbicx2/baby) of the name of one outside it, each k times smaller; and
    the files NAME_SRF_k_* beside NAME_SRF_k_HR (the SelfExSR release: LR and methods' results)."""
    root = Path(root)
    in_lr_dir = {p for p in images if any(LR_FOLDER.match(d) for d in p.relative_to(root).parts[:-1])}
    by_stem: dict[str, list[Path]] = {}
    for p in images:
        if p not in in_lr_dir:
            by_stem.setdefault(p.stem.lower(), []).append(p)
    out: dict[Path, str] = {}
    srf = {(p.parent, m.group(1).lower()): p for p in images if (m := SRF_HR.match(p.stem))}
    for p in images:
        stem = p.stem.lower()
        base = stem[:m.start()] if (m := LR_MARK.search(stem)) else None
        hr_of_srf = next((hr for (d, b), hr in srf.items() if d == p.parent and stem.startswith(b + "_")), None)
        if hr_of_srf is not None and hr_of_srf != p:
            out[p] = f"beside {hr_of_srf.name}: its LR or a method's result"
            continue
        keys = [k for k in ({stem, base} if p in in_lr_dir else {base}) if k]  # an LR folder's: any name
        candidates = [q for k in keys for q in by_stem.get(k, []) + by_stem.get(f"{k}_hr", [])]
        partners = [q for q in candidates if q != p and (p in in_lr_dir or q.parent == p.parent)]
        hr, k = next(((q, k) for q in partners if (k := _smaller_by(p, q))), (None, None))
        if hr is not None:
            out[p] = f"{hr.relative_to(root).as_posix()} made {k} times smaller"
    return out


def without_lr(root: Path, images: list[Path], what: str, *, note: bool = True) -> list[Path]:
    """`images` (under `root`) but the LR files `lr_files` finds there, named in a note on stderr
    (`what`: who leaves them out, e.g. data.train): the LR is made from each HR image."""
    left = lr_files(root, images)
    if left and note:
        first = next(iter(left))
        print(f"note: {what}: leaving out {len(left)} LR files of {root}, e.g. "
              f"{one_line(first.relative_to(root))} ({left[first]}): the LR is made from each HR image",
              file=sys.stderr)
    return [p for p in images if p not in left]


# a dataset's own lists and notes (`data split` writes train.txt/val.txt into the folder)
COMPANION_SUFFIXES = {".txt", ".md", ".json", ".csv", ".tsv", ".toml", ".yaml", ".yml"}


def note_not_images(folder: Path, files: list[Path], what: str) -> None:
    """A note on stderr naming the files of `folder` that `what` passes over (not images or videos;
    text files, a dataset's lists and read-mes, are passed over without one)."""
    files = [f for f in files if f.suffix.lower() not in COMPANION_SUFFIXES]
    videos = [f for f in files if is_video_path(f)]
    if videos:  # they were called "not images or videos" (`data split` and `check` of a video folder)
        print(f"note: {what}: {counted(len(videos), 'video file')} of {folder} {'is' if len(videos) == 1 else 'are'} left out, e.g. "
              f"{one_line(videos[0].relative_to(folder))}: {what} works on images (`upsample data prepare` "
              "cuts videos into image crops; data.train takes video files as they are)", file=sys.stderr)
        files = [f for f in files if f not in videos]
    if files:
        one = len(files) == 1
        print(f"note: {what}: {counted(len(files), 'file')} of {folder} {'is no image or video and is' if one else 'are not images or videos and are'} "
              f"left out, e.g. {one_line(files[0].relative_to(folder))} ({skip_reason(files[0])})", file=sys.stderr)


# --- prepare ---------------------------------------------------------------------------------

def crop_positions(length: int, size: int, stride: int, min_rest: int) -> list[int]:
    """Top-left offsets along one side; a last crop flush with the edge covers a remainder of at
    least `min_rest` pixels that the stride left uncovered."""
    pos = list(range(0, length - size + 1, stride))
    rest = length - (pos[-1] + size)
    if rest > 0 and rest >= min_rest:
        pos.append(length - size)
    return pos


def square_crops(img: np.ndarray, size: int, stride: int, min_rest: int) -> list[np.ndarray]:
    h, w = img.shape[:2]
    if min(h, w) < size:
        return []
    return [img[y:y + size, x:x + size] for y in crop_positions(h, size, stride, min_rest)
            for x in crop_positions(w, size, stride, min_rest)]


def source_files(src: Path) -> list[Path]:
    """The images and videos `src` names: itself, a folder's, or a .txt list's (`data split`'s
    train.txt: crops of its images only, so that none of the validation images is cut into
    training crops)."""
    if src.is_file() and src.suffix.lower() == ".txt":
        listed = read_file_list(src)
        folders = [p for p in listed if p.is_dir()]
        if folders:
            raise UserError(f"the list {src} names a folder, {folders[0]}: a list names image or video "
                            "files, one a line; give the folder itself instead")
        missing = [p for p in listed if not p.is_file()]
        if missing:
            raise UserError(missing_text(missing, src))
        return [p.resolve() for p in listed]
    if src.is_file():
        if not (is_image_path(src) or is_video_path(src)):
            raise UserError(f"{src} is neither an image nor a video (by its extension); give image or "
                            "video files, folders of them, or a .txt list of them (`data split`'s train.txt)")
        return [src]
    if not src.is_dir():
        raise UserError(f"source not found: {src}")
    images, others = list_images(src)
    videos = [p for p in others if p.is_file() and is_video_path(p)]
    note_not_images(src, [p for p in others if p not in videos], "data prepare")
    return sorted(without_lr(src, one_name_each(src, images), "data prepare") + one_name_each(src, videos))


def video_frames(path: Path, every: int):
    """(frame number, uint8 RGB HWC) of every `every`-th decoded frame (PyAV)."""
    import av

    from ..media.video import frame_rgb, main_video_stream

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = main_video_stream(container)
            stream.thread_type = "AUTO"
            for n, frame in enumerate(container.decode(stream)):
                if n % every == 0:
                    yield n, frame_rgb(frame)  # as `upsample video` feeds an RGB model
    except av.error.FFmpegError as exc:  # its str leads with FFmpeg's errno: "[Errno 1094995529] ..."
        raise UserError(f"cannot decode video {path}: {exc.strerror or exc}") from None


def _frames(path: Path, name: str, every: int):
    """(output stem, uint8 RGB HWC) of an image file or of every `every`-th frame of a video."""
    if is_video_path(path):
        for n, arr in video_frames(path, every):
            yield f"{name}_f{n:06d}", arr
    elif frames := animation_frames(path):  # read_rgb's refusal points to `upsample video`
        raise UserError(f"{path} is an animation of {frames} frames: data prepare cuts single pictures "
                        "and video files; convert it to a video (.mp4, .mkv) to cut its frames")
    else:
        yield name, read_rgb(path)


def _load_manifest(out: Path, params: str) -> dict[str, tuple[str, int]]:
    """{source path: (its key when last cut, crops made)} of the sources done in an earlier run
    into `out` (a key is "path|size|mtime": a source replaced since has another)."""
    path = out / MANIFEST
    if not path.exists():
        return {}
    text = path.read_text(**NAMES_TEXT)
    lines = text.split("\n") if text else []  # not splitlines: a name may hold U+2028, \x1c ...
    if not lines or lines[0] != params:
        raise UserError(f"{out} was prepared with other settings ({lines[0] if lines else '?'}); "
                        "use the same options or another -o folder")
    done = {}  # a source cut again after it was replaced counts as its last cut (a backup of the
    for line in lines[1:]:  # first file, restored with its time, is not the crops now there)
        key, _, n = line.rpartition("\t")
        if key:
            done[key.rsplit("|", 2)[0]] = (key, int(n) if n.isdigit() else 0)
    return done


def _drop_stale_parts(out_dir: Path) -> None:
    """Crops half-written by a run into `out_dir` that was killed (`atomic_save`'s
    .NAME_sNNN.png.XXXX.png.part files); only in a folder an earlier run made (its manifest),
    and only files named as its crops are."""
    if not (out_dir / MANIFEST).exists():
        return
    for stale in out_dir.glob(".*_s[0-9][0-9][0-9]*.png.*.png.part"):
        stale.unlink(missing_ok=True)


def _without_earlier_crops(root: Path, files: list[Path]) -> list[Path]:
    """`files` of the folder `root` but those in a sub-folder an earlier `data prepare` wrote
    (its manifest): `prepare photos -o photos/crops`, then `-o` elsewhere, cut crops of crops."""
    crop_dirs = {f.parent for f in files if f.parent != root and (f.parent / MANIFEST).exists()}
    if not crop_dirs:
        return files
    left = [f for f in files if f.parent in crop_dirs]
    print(f"note: data prepare: leaving out {counted(len(left), 'file')} of {min(crop_dirs)}, crops an earlier "
          "`data prepare` made (name that folder itself to cut them again)", file=sys.stderr)
    return [f for f in files if f.parent not in crop_dirs]


def _sources_to_cut(sources: list[str], out_dir: Path) -> list[tuple[Path, str]]:
    """(file, crop name stem) of every picture and video under `sources`, each once, none of
    them under `out_dir`; a UserError where two would make crops of one name or none is found."""
    todo, made_here, named, taken = [], out_dir.resolve(), {}, set()
    for src in sources:
        root = Path(src).resolve()
        files = source_files(root)
        if root.suffix.lower() == ".txt" and files:  # a list: named as the folder that holds its files
            root = Path(os.path.commonpath([f.parent for f in files]))
        elif root.is_dir():
            files = _without_earlier_crops(root, files)
        for f in files:
            if made_here in f.parents or f in taken:  # -o inside a source; one file named twice
                continue
            name = f.relative_to(root.parent).with_suffix("").as_posix().replace("/", "__")
            if name in named:
                raise UserError(f"{named[name]} and {f} would make crops of the same names ({name}_s000.png "
                                "...): prepare folders of different names, or into different -o folders")
            named[name] = f
            taken.add(f)
            todo.append((f, name))
    if not todo:
        inside = any(made_here == Path(src).resolve() for src in sources)
        raise UserError(f"-o {out_dir} is the source folder itself: name another folder for the crops" if inside
                        else f"no images or videos in {', '.join(sources)}"
                        + (hidden_hint(Path(sources[0])) if len(sources) == 1 else ""))
    return todo


def prepare(sources: list[str], out: str, *, size: int = 512, stride: int | None = None,
            min_rest: int = 0, every: int = 1, progress: bool = True) -> dict:
    """Cut sources into size x size PNG crops in `out`; returns counts. Re-running skips the
    sources listed in out/.prepare-done and any crop file that already exists, but cuts a source
    replaced since (same path, other size or time) again, its old crops removed."""
    stride = size if stride is None else stride
    if size < 1 or stride < 1 or every < 1 or min_rest < 0:
        raise UserError("--size, --stride and --every-n-frames must be >= 1, --min-size >= 0")
    out_dir = Path(out)
    todo = _sources_to_cut(sources, out_dir)
    if progress and (note := transparent_note([f for f, _ in todo if not is_video_path(f)], "data prepare",
                                              "their crops are cut of")):
        tqdm.write(note, file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    _drop_stale_parts(out_dir)
    params = f"# size={size} stride={stride} min_rest={min_rest} every={every}"
    done = _load_manifest(out_dir, params)
    if not (out_dir / MANIFEST).exists():
        (out_dir / MANIFEST).write_text(params + "\n")
    counts = {"sources": len(todo), "skipped_done": 0, "too_small": 0, "unreadable": 0,
              "crops": 0, "written": 0}
    bar = progress_bar(len(todo), progress, desc="prepare", unit=" file")
    largest = 0  # the shorter side of the largest picture too small for a crop
    for path, name in todo:
        bar.update(1)  # started: the files already done are passed over as quickly
        st = path.stat()
        source = one_line(path.resolve())  # a name's line break: one manifest line
        key = f"{source}|{st.st_size}|{st.st_mtime_ns}"
        earlier_key, earlier_crops = done.get(source, (None, 0))
        if key == earlier_key:  # its crops (or that it had none) counted as before
            counts["skipped_done"] += 1
            counts["crops"] += earlier_crops
            counts["too_small"] += earlier_crops == 0
            continue
        # a file replaced since it was cut (same name, other picture): its old crops were kept
        changed = earlier_key is not None
        n_crops, small, pictures, made = 0, None, 0, set()
        try:
            for stem, arr in _frames(path, name, every):
                pictures += 1
                crops = square_crops(arr, size, stride, min_rest)
                if not crops:
                    small = arr.shape
                for i, crop in enumerate(crops):
                    target = out_dir / f"{stem}_s{i:03d}.png"
                    if changed or not target.exists():  # else made by a run that was stopped
                        atomic_save(Image.fromarray(np.ascontiguousarray(crop)), target, compress_level=4)
                        counts["written"] += 1
                    n_crops += 1
                    made.add(target.name)
        except UserError as exc:
            tqdm.write(f"skipping: {exc}", file=sys.stderr)
            counts["unreadable"] += 1
            continue
        if changed:  # a smaller picture: fewer crops, the old ones past them would stay
            _drop_crops_not_made(out_dir, path, name, made)
        if not pictures:  # a video cut short decodes no frame without an error: was skipped silently
            tqdm.write(f"skipping: {path} has no frames that decode (cut short?); copy it again", file=sys.stderr)
            counts["unreadable"] += 1
            continue
        if small is not None and not n_crops:  # named, as the unreadable ones are; one source counted once
            counts["too_small"] += 1
            tqdm.write(f"skipping: {path} is {small[1]}x{small[0]}, smaller than --size {size}", file=sys.stderr)
            largest = max(largest, min(small[:2]))
        counts["crops"] += n_crops
        with open(out_dir / MANIFEST, "a", **NAMES_TEXT) as f:
            f.write(f"{key}\t{n_crops}\n")
        bar.set_postfix(crops=counts["crops"], refresh=False)
    bar.close()
    if not counts["crops"]:  # exit 0 and "0 crops" read as done, and training found an empty folder
        raise UserError(no_crops_text(counts, size, largest))
    return counts


def _drop_crops_not_made(out_dir: Path, source: Path, name: str, made: set[str]) -> None:
    """Remove the crops of `source`, named `name`, in `out_dir` (NAME_s000.png, a video's
    NAME_f000000_s000.png) but those in `made`: the crops of a picture it no longer is (a
    picture's pattern alone: a neighbour NAME_f000001.png's crops are not a video's frames)."""
    frame = r"_f\d{6}" if is_video_path(source) else ""
    mine = re.compile(re.escape(name) + frame + r"_s\d{3,}\.png")
    for old in out_dir.glob(glob.escape(name) + "_*.png"):
        if mine.fullmatch(old.name) and old.name not in made:
            old.unlink(missing_ok=True)


def no_crops_text(counts: dict, size: int, largest: int) -> str:
    """Why `prepare` made no crop at all, and what to do."""
    why = []
    if counts["too_small"]:
        lower = f"; lower --size to at most {largest}" if largest else "; lower --size"
        n = counts["too_small"]
        why.append(f"{n} {'picture is' if n == 1 else 'pictures are'} smaller than --size {size}{lower}")
    if counts["unreadable"]:
        n = counts["unreadable"]
        why.append(f"{n} {'file' if n == 1 else 'files'} could not be read (named above; `upsample data check` "
                   "lists them)")
    return f"no crops made of the {counts['sources']} sources: " + ", ".join(why or ["nothing to cut"])


# --- check / clean ---------------------------------------------------------------------------

@dataclass
class Problem:
    path: Path
    kind: str      # unreadable, truncated, too-small, grayscale, cmyk, alpha, duplicate
    detail: str


PROBLEM_KINDS = ("unreadable", "truncated", "too-small", "grayscale", "cmyk", "alpha", "duplicate")


def animation_frames(path: Path) -> int:
    """The frames of an animated GIF, APNG or WebP (training and `prepare` take one picture a
    file, and refuse it), else 0: a camera's MPO JPEG (a preview frame) and a multi-page TIFF
    are stills, as training reads them (their first picture)."""
    frames = image_frame_count(path) or 0
    return frames if frames > 1 else 0


def open_checked(path: Path) -> tuple[Image.Image | None, Problem | None]:
    """(the decoded image, None), or (None, why the reader that training uses refuses it): an
    animation, an empty file, a truncated or corrupt one."""
    frames = animation_frames(path)
    if frames:
        return None, Problem(path, "unreadable", f"an animation of {frames} frames: training and `data prepare` "
                                                 "read one picture a file (convert it to a video to cut its frames)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_image(path), None
    except UserError as exc:
        why = str(exc).removeprefix(f"cannot read image {path}: ")
        return None, Problem(path, "truncated" if "truncated" in why.lower() else "unreadable", why)


def has_alpha_channel(img: Image.Image) -> bool:
    """Whether `img` has an alpha as `imageio.planes_from_pil` reads it: an alpha band, or a
    transparent colour key (a palette's, or a gray or RGB PNG's tRNS)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def has_transparent_pixel(img: Image.Image) -> bool:
    if not has_alpha_channel(img):
        return False
    if img.mode.startswith("I"):  # 16/32-bit gray: its key is a gray value, which convert() drops
        key = img.info.get("transparency")
        return isinstance(key, int) and bool((np.asarray(img) == key).any())
    return int(np.asarray(img.convert("RGBA"))[..., 3].min()) < 255


def transparent_images(files: list[Path], limit: int = 16) -> tuple[int, Path | None]:
    """(how many of `files` have an alpha channel, by their headers; the first of them, of up to
    `limit` decoded, with a transparent pixel, else None). Training reads their colour as stored,
    under transparent pixels too (often black or garbage), where `upsample image` fills that
    colour from the visible pixels first (`imageio.fill_hidden_colour`)."""
    with_alpha = []
    for f in files:
        try:
            with Image.open(f) as img:
                if has_alpha_channel(img):
                    with_alpha.append(f)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # reading the pixels says why
            pass
    for f in with_alpha[:limit]:
        try:
            with Image.open(f) as img:
                if has_transparent_pixel(img):
                    return len(with_alpha), f
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            pass
    return len(with_alpha), None


def transparent_note(files: list[Path], what: str, made: str) -> str | None:
    """The note naming a picture of `files` with transparent pixels (`transparent_images`), `made`
    saying what is made of their colour there, else None."""
    count, example = transparent_images(files)
    if example is None:
        return None
    have = "has" if count == 1 else "have"
    return (f"note: {what}: {counted(count, 'image')} {have} an alpha channel, e.g. {example} with transparent pixels: "
            f"{made} their colour there as stored (often black), which `upsample image` fills from the visible "
            "pixels; flatten them onto their background, or `upsample data clean FOLDER --quarantine Q` moves "
            "them aside")


def inspect_image(path: Path, min_size: int) -> tuple[list[Problem], str | None, np.ndarray | None]:
    """Problems of one file, the hash of its decoded pixels and its gray 16x16 thumbnail (None,
    None when unreadable)."""
    img, refused = open_checked(path)
    if refused is not None:
        return [refused], None, None
    probs = []
    w, h = img.size
    if min(w, h) < min_size:
        probs.append(Problem(path, "too-small", f"{w}x{h} < {min_size}"))
    mode = img.mode
    if mode == "CMYK":
        probs.append(Problem(path, "cmyk", "CMYK colour"))
    if has_transparent_pixel(img):
        probs.append(Problem(path, "alpha", f"{mode} with transparent pixels"))
    if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        probs.append(Problem(path, "grayscale", f"mode {mode}"))
    elif mode in ("RGB", "RGBA", "P"):
        rgb = np.asarray(img.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            probs.append(Problem(path, "grayscale", f"gray stored as {mode}"))
    digest = hashlib.sha1(f"{mode}{img.size}".encode() + img.tobytes()).hexdigest()
    return probs, digest, thumbnail(img)


def thumbnail(img: Image.Image) -> np.ndarray:
    """Gray 16x16 box means (float, 0-255): what a re-saved copy of the picture keeps. Deep and
    float pictures (I;16, I, F) are scaled from their own range (convert("L") clipped them at
    255: every 16-bit picture of a size looked like every other)."""
    if img.mode.startswith(("I", "F")):
        values = np.asarray(img.convert("F").resize((16, 16), Image.BOX), np.float64)
        low, high = values.min(), values.max()
        return (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    gray = img.convert("RGB").convert("L") if img.mode in ("P", "PA", "CMYK", "RGBA", "LA") else img.convert("L")
    return np.asarray(gray.convert("F").resize((16, 16), Image.BOX), np.float64)


# mean |difference| of two thumbnails under which they are one picture saved twice: a JPEG re-save
# (quality 30-95) of a photo differs by 0.02-0.3 levels, a 1-pixel shift or a 2% brighter one by 0.7+
NEAR_COPY_LEVELS = 0.5
NEAR_COPIES_SHOWN = 10


def near_copies(thumbs: list[tuple[Path, tuple[int, int], np.ndarray]]) -> list[tuple[Path, Path]]:
    """Pairs (earlier, later) of the images (path, size, thumbnail) of one size whose thumbnails
    differ by less than NEAR_COPY_LEVELS: a picture re-encoded (a PNG saved again as JPEG).
    Only thumbnails whose means differ by less than that are compared (the mean difference bounds
    it): a folder of `data prepare`'s crops, all of one size, is not compared pair by pair."""
    by_size: dict[tuple[int, int], list[tuple[Path, np.ndarray]]] = {}
    for path, size, thumb in thumbs:
        by_size.setdefault(size, []).append((path, thumb))
    pairs = []
    for group in (g for g in by_size.values() if len(g) > 1):
        stack = np.stack([t for _, t in group])
        means = stack.mean(axis=(1, 2))
        order = np.argsort(means, kind="stable")
        for k, i in enumerate(order[:-1]):
            end = np.searchsorted(means[order], means[i] + NEAR_COPY_LEVELS, side="left")
            near = order[k + 1:max(end, k + 1)]
            diff = np.abs(stack[near] - stack[i]).mean(axis=(1, 2))
            pairs += [tuple(group[j][0] for j in sorted((i, int(n)))) for n in near[diff < NEAR_COPY_LEVELS]]
    return sorted(pairs)


def note_near_copies(pairs: list[tuple[Path, Path]], what: str) -> None:
    """Name (on stderr) the pairs of images that look like one picture saved twice: not a problem
    `clean` moves (a burst of shots from a tripod looks the same), but a copy on each side of a
    split scores validation on a picture that is trained on."""
    for a, b in pairs[:NEAR_COPIES_SHOWN]:
        print(f"note: {what}: {one_line(a)} and {one_line(b)} look like one picture saved twice (same "
              "size, nearly the same pixels)", file=sys.stderr)
    if pairs:
        more = f" ({len(pairs) - NEAR_COPIES_SHOWN} more not shown)" if len(pairs) > NEAR_COPIES_SHOWN else ""
        print(f"note: {what}: {len(pairs)} pairs of images look like copies of one picture{more}; where they "
              "are, remove one of each: `data split` could put them on both sides", file=sys.stderr)


# the names file managers give a copy: macOS "photo copy", "photo copy 2", Windows "photo - Copy",
# "photo - Copy (2)", browsers' and phones' "photo (1)", "photo(1)"
COPY_NAME = re.compile(r"(?i)(?:[ _-]copy(?: ?\(?\d+\)?)?|\s?\(\d+\))$")


def scan(folder: str, min_size: int, exclude: Path | None = None, progress: bool = True
         ) -> tuple[list[Path], list[Problem]]:
    images, others = list_images(folder)
    if exclude is not None:
        ex = exclude.resolve()
        images = [p for p in images if ex not in p.resolve().parents]
        others = [p for p in others if ex not in p.resolve().parents]
    broken = [p for p in others if p.is_symlink() and not p.exists() and is_image_path(p)]
    note_not_images(Path(folder), [p for p in others if p not in broken], "data check")
    problems = [Problem(p, "unreadable", "a broken link") for p in broken]
    images = one_name_each(Path(folder), images)  # a file and a link to it: one file, as training takes it
    images = without_lr(Path(folder), images, "data check")  # not problems: training leaves them out
    seen, thumbs = {}, []
    # the files that lie in the folder first, then those not named as copies: of two, the copy that
    # a link leads to, or "photo copy.png", is the duplicate (`clean` moves it), not "photo.png"
    order = sorted(images, key=lambda p: (outside(Path(folder), p), bool(COPY_NAME.search(p.stem)), p))
    for p in track(order, progress, desc="check", unit=" img"):
        probs, digest, thumb = inspect_image(p, min_size)
        problems += probs
        if digest in seen:
            problems.append(Problem(p, "duplicate", f"same pixels as {seen[digest]}"))
        elif digest is not None:
            seen[digest] = p
            thumbs.append((p, header_size(p), thumb))
    note_near_copies(near_copies(thumbs), "data check")
    return images + broken, problems


def _unique_target(path: Path) -> Path:
    if not path.exists():
        return path
    i = 1
    while path.with_name(f"{path.stem}.{i}{path.suffix}").exists():
        i += 1
    return path.with_name(f"{path.stem}.{i}{path.suffix}")


def clean(folder: str, quarantine: str, *, min_size: int, keep: list[str], progress: bool = True
          ) -> tuple[int, list[Problem], list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Move the files with problems (except kinds in `keep`) under `quarantine`, keeping their
    relative paths; a log QUARANTINE.tsv there says why. Nothing is deleted. A file that a
    linked folder leads to outside `folder` is left where it is (moving it would empty another
    folder), returned with why in the last list; a linked file is moved as the link."""
    root, qdir = Path(folder), Path(quarantine)
    if qdir.resolve() == root.resolve() or root.resolve() in qdir.resolve().parents:
        raise UserError(f"--quarantine {qdir} is inside {root}: `check`, `split` and training would still "
                        "find the files there; name a folder outside it")
    n, problems = scan(folder, min_size, exclude=qdir, progress=progress)
    if not n and not problems:  # as `check` takes it: a wrong folder, most likely
        raise UserError(f"no images in {folder}{hidden_hint(Path(folder))}")
    reasons: dict[Path, list[str]] = {}
    for pr in problems:
        if pr.kind not in keep:
            reasons.setdefault(pr.path, []).append(f"{pr.kind}: {pr.detail}")
    links = _file_links(root, qdir)
    moved, left = [], []
    for path, why in reasons.items():
        if not _movable(root, path):
            left.append((path, f"it is {os.path.realpath(path)}, outside {root} (a linked folder leads there): "
                               "clean that folder itself, or remove the link"))
            continue
        moved.append((path, _quarantine(root, qdir, path, why)))
        for link in links.get(os.path.realpath(path), []):  # else left leading to nothing
            if link != path and os.path.lexists(link):
                moved.append((link, _quarantine(root, qdir, link, [f"a link to {path}, moved with it"] + why)))
    return len(n), problems, moved, left


def _file_links(root: Path, qdir: Path) -> dict[str, list[Path]]:
    """{real path: the linked files under `root` that lead to it} (quarantine left out)."""
    images, others = list_images(root)
    ex = qdir.resolve()
    links: dict[str, list[Path]] = {}
    for p in images + others:
        if p.is_symlink() and p.exists() and ex not in p.resolve().parents and _movable(root, p):
            links.setdefault(os.path.realpath(p), []).append(p)
    return links


def _movable(root: Path, path: Path) -> bool:
    """Whether moving `path` (found under `root`) changes only `root`: it sits in a folder of
    `root` (not one a linked folder leads to elsewhere) and is a link or lies in `root` itself."""
    return not outside(root, path.parent) and (path.is_symlink() or not outside(root, path))


def _tsv_field(text) -> str:
    """`text` as one field of a QUARANTINE.tsv line: a name's tab or line break written as \\t, \\n."""
    return one_line(text).replace("\t", "\\t")


def _quarantine(root: Path, qdir: Path, path: Path, why: list[str]) -> Path:
    """Move `path` (a file under `root`) to its place under `qdir`, logged in QUARANTINE.tsv."""
    target = _unique_target(qdir / path.relative_to(root))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))  # a link is moved as the link: what it leads to stays
    with open(qdir / "QUARANTINE.tsv", "a", **NAMES_TEXT) as f:
        # absolute: the log undoes the move from whatever folder it is read in
        f.write("\t".join(_tsv_field(x) for x in (path.absolute(), target.absolute(), "; ".join(why))) + "\n")
    return target


# --- split -----------------------------------------------------------------------------------

def without_readable_headers(root: Path, images: list[Path]) -> list[Path]:
    """`images` but those whose header cannot be read, the animations and those over the pixel
    limit (a training run would stop at each), with a note naming one and the commands that find
    and move aside every such file."""
    why = {p: _unusable(p) for p in images}
    unusable = sorted(p for p, reason in why.items() if reason is not None)
    if unusable:
        first = unusable[0]
        print(f"note: data split: leaving out {counted(len(unusable), 'file')} that training cannot read, "
              f"e.g. {one_line(first.relative_to(root))} ({why[first]}): `upsample data check {root}` names "
              f"every such file, `upsample data clean {root} --quarantine DIR` moves them aside",
              file=sys.stderr)
    return [p for p in images if why[p] is None]


def _unusable(path: Path) -> str | None:
    """Why training would refuse `path` as one picture, from its header: None where it would not."""
    size = header_size(path)
    if size is None:
        return "it cannot be read as an image"
    if animation_frames(path):
        return "an animation"
    limit = max_pixels()
    if limit and size[0] * size[1] > limit:
        return f"{size[0]}x{size[1]}, over the {limit / 1e6:.0f} Mpx that --max-pixels allows"
    return None


def split(folder: str, val_fraction: float, seed: int, out: str | None = None, *,
          overwrite: bool = False) -> tuple[int, int, Path]:
    """Write train.txt and val.txt (hash_split of the images under `folder`) into `out` (default:
    the folder itself); returns (train count, val count, the lists' folder). Lists already
    there with other contents are replaced only with `overwrite`."""
    root = Path(folder)
    images, others = list_images(root)
    note_not_images(root, others, "data split")
    images = without_lr(root, one_name_each(root, images), "data split")
    readable = without_readable_headers(root, images)
    if not readable:
        raise UserError(f"no {'readable ' if images else ''}images in {root}{hidden_hint(root)}")
    images = readable
    if not 0 < val_fraction < 1:
        raise UserError(f"--val must be a fraction between 0 and 1, got {val_fraction}")
    keys = [p.relative_to(root).as_posix() for p in images]
    tr, val = split_copies_together(keys, images, val_fraction, seed)
    out_dir = Path(out) if out else root
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())  # made if new
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"cannot write to {out_dir} ({existing} is "
                        f"{'not writable' if existing.is_dir() else 'a file'}); give --out DIR")
    lists = {out_dir / "train.txt": [images[i] for i in tr], out_dir / "val.txt": [images[i] for i in val]}
    texts = {path: file_list_text(files, path) for path, files in lists.items()}  # a name no line holds:
    for path, text in texts.items():                                               # refused before either is written
        if path.is_dir() or (path.exists() and not overwrite and path.read_text(**NAMES_TEXT) != text):
            raise UserError(f"{path} exists with other contents; pass --overwrite to replace it, or -o DIR")
    for path, files in lists.items():
        write_file_list(files, path)
    return len(tr), len(val), out_dir
