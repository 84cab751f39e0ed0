"""Upscaling files and folders of images: which files, where each one goes, and the engine.

Torch-free until a model has to be built: on a cache hit (`fastpath.FastEngine`) the images run
without torch; otherwise (or for an image the fast path does not take) `api.ImageUpscaler`, built
once. Outputs are never overwritten without `overwrite` (not even by two runs writing one output
at once: the first one put in place is kept), never written over their input, and are written
under a temporary name renamed when complete (`imageio.save_planes`).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import unicodedata
from pathlib import Path

from ..data.bicubic import output_size  # torch-free, as this module is until a model is built
from ..errors import UserError, one_line
from ..media import streamed
from ..media.imageio import (NAME_MAX, PNG_STRIP_MODES, SAVE_FORMATS, OutputTaken, header_size, is_image_path,
                             list_images, png_strips, read_planes, save_planes, skip_reason, storable_path)
from . import fastpath
from .sizes import resident_bytes


# Outputs larger than this are written in strips when their format allows (PNG without alpha):
# the image is then upscaled band by band and never held whole (`ImageUpscaler.upscale_planes_in_strips`).
STREAM_BYTES = 64_000_000
# An input whose whole decode (Pillow's image and the array made from it) would take more than
# this share of the memory budget (--max-memory, else half the free memory) is decoded in bands
# of rows too, where its format allows (`media.streamed`: PNG, JPEG): the tiles, one output band
# and the model share the rest.
WHOLE_DECODE_SHARE = 0.25


def collect_inputs(inputs: list[str], out: Path | None = None, suffix: str | None = None
                   ) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(source file, path relative to the output folder) for files and folders (recursive), a file
    named twice once; and the pictures of input folders left out as earlier runs' outputs
    (`_earlier_outputs`: never replaced), less those also named as inputs. An output folder `out`
    inside an input folder (or linked from it) is not read: its pictures are this run's results."""
    jobs, empty, earlier, seen, real = [], [], {}, set(), _RealPaths()
    made = out.resolve() if out is not None else None
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images, left = _folder_images(p, made, suffix, real)
            earlier.update({f: (p, src) for f, src in left.items()})
            if not images:
                empty.append(str(p))
            found = [(f, f.relative_to(p)) for f in images]
        elif p.is_file():
            found = [(p, Path(p.name))]
        else:
            raise UserError(_not_an_input(p))
        for src, rel in found:  # `*.png a.png`, or a folder and a file in it: one job
            if (real(src), rel) not in seen:
                seen.add((real(src), rel))
                jobs.append((src, rel))
    named = {real(src) for src, _ in jobs} if earlier else set()
    left_out = {f: why for f, why in earlier.items() if real(f) not in named}  # named itself: upscaled
    if not jobs:  # all were empty folders: the one line says which
        raise UserError(f"no images in {', '.join(empty)}")
    for folder in empty:
        print(f"note: no images in {one_line(folder)}", file=sys.stderr)
    _note_earlier(left_out)
    return jobs, list(left_out)


class _RealPaths:
    """f.resolve() of many files, each folder resolved once: a realpath per file (an lstat per
    component) took 20 s of a 50,000-image folder's listing."""

    def __init__(self):
        self.folders: dict[Path, Path] = {}

    def __call__(self, f: Path) -> Path:
        if f.is_symlink():
            return f.resolve()
        folder = self.folders.get(f.parent)
        if folder is None:
            folder = self.folders[f.parent] = f.parent.resolve()
        return folder / f.name


def _folder_images(folder: Path, made: Path | None, suffix: str | None, real: _RealPaths
                   ) -> tuple[list[Path], dict[Path, Path]]:
    """The images of `folder` to upscale, and those left out as earlier outputs ({image: its
    source}), with a note for each file skipped; none under `made` (this run's -o: inside the
    folder, or reached through a linked folder)."""
    images, skipped = list_images(folder)
    root = folder.resolve()
    if made is not None and made != root and made not in root.parents:  # -o holds the input: all read
        under = os.path.join(made, "")
        images = [f for f in images if not str(real(f)).startswith(under)]
    for s in skipped:
        print(f"note: skipping {one_line(s)} ({skip_reason(s)})", file=sys.stderr)
    earlier = _earlier_outputs(images, folder, suffix)
    return [f for f in images if f not in earlier], earlier


def _note_earlier(left_out: dict[Path, tuple[Path, Path]]) -> None:
    """One note per input folder for its pictures left out as earlier outputs, saying how to
    upscale them all the same."""
    by_folder: dict[Path, list[tuple[Path, Path]]] = {}
    for f, (folder, src) in left_out.items():
        by_folder.setdefault(folder, []).append((f, src))
    for folder, pairs in by_folder.items():
        f, src = pairs[0]
        print(f"note: {len(pairs)} image(s) in {one_line(folder)} are named and sized as upscales of others "
              f"there (e.g. {one_line(f)}, of {one_line(src)}): an earlier run's outputs, not read as an "
              f"input; to upscale them too, name the files as inputs besides the folder (e.g. "
              f"{one_line(f)})", file=sys.stderr)


# How an output's name ends (`--suffix`'s default): _x2, _x4, _x1.5
_SCALE_SUFFIX = re.compile(r"^(.+)_x(\d+(?:\.\d+)?)$")


def _earlier_outputs(images: list[Path], root: Path, suffix: str | None) -> dict[Path, Path]:
    """{image: the image it is the output of}: an image whose path from `root`, or from a folder
    below it, is another's path from `root` with _x<scale> (or `suffix`) after the stem, and whose
    size is that image's upscaled: what `upsample image ROOT -o ROOT` or `-o ROOT/SUB` wrote in an
    earlier run (photos/x4/a_x4.png beside photos/a.jpg). Read again, a second run would upscale
    the first one's results; a photo of another size (holiday_x2.jpg) is an input."""
    by_place = {}
    for f in images:
        rel = f.relative_to(root)
        by_place.setdefault((rel.parent, rel.stem), f)
    found, sizes = {}, {}
    for f in images:
        parts = f.relative_to(root).parts
        places = [(Path(*parts[k:-1]), stem, scale) for stem, scale in _unsuffixed(f.stem, suffix)
                  for k in range(len(parts))]
        sources = ((by_place[(folder, stem)], scale) for folder, stem, scale in places
                   if by_place.get((folder, stem), f) != f)
        source = next((src for src, scale in sources
                       if _upscaled_size(_header_size(src, sizes), _header_size(f, sizes), scale)), None)
        if source is not None:
            found[f] = source
    return found


def _header_size(path: Path, sizes: dict) -> tuple[int, int] | None:
    """`header_size` of `path`, read once for the many outputs a source may be compared with."""
    if path not in sizes:
        sizes[path] = header_size(path)
    return sizes[path]


def _upscaled_size(src: tuple[int, int] | None, out: tuple[int, int] | None, scale: float | None) -> bool:
    """Whether `out` is the size of `src` upscaled at `scale` (None: some scale over 1), either
    way round (an EXIF-rotated source is written upright), a pixel either way (a scale's name is
    rounded: _x1.33333)."""
    if not src or not out or not all(src):
        return False
    for w, h in (src, src[::-1]):
        s = scale or out[0] / w
        if s > 1 and abs(out[0] - w * s) <= 1 and abs(out[1] - h * s) <= 1:
            return True
    return False


def _unsuffixed(stem: str, suffix: str | None) -> list[tuple[str, float | None]]:
    """(the stem an output named `stem` would have come from, the scale its name says): without
    _x<scale>, or without a non-empty `suffix`, scale unknown (an empty one would make every
    same-named file in a sub-folder an output)."""
    match = _SCALE_SUFFIX.match(stem)
    stems = [(match.group(1), float(match.group(2)))] if match else []
    if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
        stems.append((stem[:-len(suffix)], None))
    return stems


def _not_an_input(p: Path) -> str:
    """Why `p`, neither a file nor a folder, is no input: missing, a broken link, stdin's "-",
    or a pipe or device (read once, of unknown size: not taken)."""
    if str(p) == "-":
        return "input -: standard input is not read; save the picture to a file and name that"
    if not os.path.lexists(p) and any(c in str(p) for c in "*?["):
        return (f"input not found: {p} (a pattern is expanded by the shell: leave it unquoted, or "
                "name the folder)")
    if p.is_symlink() and not p.exists():
        return f"input {p} is a broken link (to {os.readlink(p)})"
    if p.exists():
        return f"input {p} is not a regular file or a folder (a pipe or a device); save the picture to a file"
    return f"input not found: {p}"


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


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path, out: Path, option: str = "-o") -> None:
    """A UserError unless files can be created in `folder` or (not there yet) in the folder it
    would be made in: a real probe file, since permission bits say nothing of read-only mounts,
    ACLs, root or /proc."""
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise UserError(f"{option} {out}: {base} is a file, so no folder can be made under it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".upsample-probe-", dir=base)
    except OSError as exc:
        raise UserError(f"{option} {out}: cannot write in {base} ({exc.strerror or exc}); choose another "
                        "place") from None
    os.close(fd)
    os.unlink(probe)


def check_output_location(inputs: list[str], jobs: list, out: Path) -> None:
    """Before any model loads: the output is a writable folder, or (one input file) a file of a
    format we write. An -o ending in .png/.jpg/.jpeg/.webp names a file; another picture
    extension (.tif, .bmp ...) is refused, as no writer is chosen for it; anything else is a
    folder, made if missing."""
    if str(out) == "-":
        raise UserError("-o -: standard output is not written; name an output folder, or a .png, "
                        ".jpg or .webp file for one input")
    ext = out.suffix.lower().lstrip(".")
    names_file = is_image_path(out) and not out.is_dir()
    if names_file and ext not in SAVE_FORMATS:
        raise UserError(f"-o {out}: .{ext} files are not written; name a .png, .jpg or .webp file, "
                        "or a folder")
    if names_file and not is_single_file(inputs, jobs, out):
        folders = [i for i in inputs if Path(i).is_dir()]
        why = (f"{len(jobs)} images need a folder" if len(jobs) > 1 or not folders else
               f"the input {folders[0]} is a folder")
        raise UserError(f"-o {out} names one image file, but {why}: name an output folder")
    if names_file:
        if out.resolve() == jobs[0][0].resolve() or _file_id(out) == _file_id(jobs[0][0]):
            raise UserError(f"-o {out} is the input itself; inputs are never overwritten: name another file")
        check_writable(out.parent, out)
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is an existing file, and the outputs need a folder: name a folder "
                        "(or, for one input, an image file to write)")
    check_writable(out, out)


def plan_outputs(jobs: list[tuple[Path, Path]], out: Path, *, suffix: str, ext: str, single: bool,
                 overwrite: bool, left_out=()) -> tuple[list[tuple[Path, Path]], int, int]:
    """(the (source, destination) pairs to write, how many are skipped because their output
    exists, how many refused because the output would replace the input). Two inputs that
    would write one file stop everything before any work. With -o the input folder, an input
    named as another's output (x_x2.png beside x.png) is an earlier run's output: not read, and
    kept (x.png skipped, or refused with --overwrite), as are the `left_out` files of input folders.
    An output name too long for a file system is refused, that file alone."""
    if any(sep in suffix for sep in ("/", "\\")):
        raise UserError(f"--suffix {suffix!r}: a suffix is part of a file name, without / or \\; "
                        "name the folder with -o")
    todo, seen, skipped, refused = [], {}, len(left_out), 0  # earlier outputs: counted as skipped
    name_of = _name_key(out, len(jobs))
    # files by identity, not name: a link, a hard link or (macOS, Windows) X.PNG for x.png is the input
    planned = [(src, _file_id(src), dst, _file_id(dst))
               for src, dst in ((s, output_path(out, rel, s, suffix, ext, single)) for s, rel in jobs)]
    sources = {here for _, here, _, _ in planned} - {None}
    kept = sources | {_file_id(f) for f in left_out} - {None}
    output_of = {where: src for src, here, _, where in planned if where in sources and where != here}
    for src, here, dst, where in planned:
        if here in output_of:  # counted with the skipped
            print(f"note: {src} has the output name of {output_of[here].name}: not read as an input",
                  file=sys.stderr)
            skipped += 1
            continue
        if where in kept and (overwrite or where == here):
            print(f"upsample image: error: {src}: its output {dst.name} would replace an input; "
                  f"use another -o or --suffix", file=sys.stderr)
            seen[name_of(dst)], refused = src, refused + 1
            continue
        _check_not_taken(src, dst, seen.get(name_of(dst)), ext)
        seen[name_of(dst)] = src
        if _name_too_long(src, dst):
            refused += 1
            continue
        if dst.exists() and not overwrite:
            print(f"note: {dst} exists, skipped (use --overwrite to replace it)", file=sys.stderr)
            skipped += 1
            continue
        todo.append((src, dst))
    _note_same_fallback(jobs, ext)
    return todo, skipped, refused


def _file_id(path: Path) -> tuple[int, int] | None:
    """The identity (device, inode) of the file at `path`, None where there is none."""
    try:
        st = path.stat()
    except OSError:  # missing, or a name too long
        return None
    return st.st_dev, st.st_ino


def _check_not_taken(src: Path, dst: Path, other: Path | None, ext: str) -> None:
    """A UserError when `other`, another input, is written to `dst` too."""
    if other is None:
        return
    formats = (" or keep each one's format with --ext same," if ext != "same"
               and src.suffix.lower() != other.suffix.lower() else "")
    raise UserError(f"{src} and {other} would both be written to {dst}: rename one,{formats} "
                    "or upscale them into different -o folders")


def _name_too_long(src: Path, dst: Path) -> bool:
    """Whether `dst`'s name is longer than its file system takes; if so, one error line. Over
    NAME_MAX bytes a real file is tried: NTFS and exFAT count 255 UTF-16 units, not bytes (100
    Japanese characters are 300 bytes of UTF-8 and fit there)."""
    size = len(os.fsencode(dst.name))
    too_long = size > NAME_MAX and not _name_fits(dst)
    if too_long:
        print(f"upsample image: error: {one_line(src)}: its output name {one_line(dst.name)} is {size} "
              f"bytes, over the {NAME_MAX} a file name may have; rename the file or use a shorter --suffix",
              file=sys.stderr)
    return too_long


def _name_fits(dst: Path) -> bool:
    """Whether a file named `dst.name` can be made where `dst` goes (its nearest existing folder)."""
    probe = _existing_ancestor(dst.parent) / dst.name
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return True
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _name_key(folder: Path, count: int):
    """How output paths in `folder` are compared: as they are, or (a case-blind file system: macOS,
    Windows, an exFAT card, where IMG.png and img.png are one file) case-folded and NFC-normalized."""
    if count < 2 or not _case_blind(folder):
        return lambda path: path
    return lambda path: unicodedata.normalize("NFC", str(path)).casefold()


def _case_blind(folder: Path) -> bool:
    """Whether the file system of `folder` (or of its nearest existing parent) finds a file under
    its name in upper case: a real probe file, as no call says it."""
    base = _existing_ancestor(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".upsample-case-probe-", dir=base)
    except OSError:
        return False  # nothing is written there anyway (check_output_location says why)
    os.close(fd)
    try:
        upper = os.path.join(base, os.path.basename(probe).upper())
        return os.path.exists(upper)
    finally:
        os.unlink(probe)


def _note_same_fallback(jobs: list[tuple[Path, Path]], ext: str) -> None:
    """`--ext same` keeps each input's format where it is written (PNG, JPEG, WebP); say which
    inputs' formats are not, and go to PNG."""
    other = sorted({s.suffix.lower() for s, _ in jobs if s.suffix.lower().lstrip(".") not in SAVE_FORMATS})
    if ext == "same" and other:
        print(f"note: --ext same: {', '.join(other)} files are not written here; their outputs are PNG",
              file=sys.stderr)


class Engines:
    """The fast path when the cache holds a plan for these options, and the full (torch) engine,
    built once when first needed (a fast-path miss, or an image it does not take)."""

    def __init__(self, args, *, max_memory: int | None, tile_batch: int | None, progress: bool):
        self.args, self.max_memory, self.tile_batch, self.progress = args, max_memory, tile_batch, progress
        self._full, self._lock = None, threading.Lock()
        self.fast = fastpath.load(args)  # bicubic, or a cache hit: no torch unless an image needs it
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
        because that name exists: before the work (another run of the same command wrote it since
        the plan), or (without `overwrite`) when it was to be put in place (`OutputTaken`)."""
        if not overwrite and os.path.lexists(dst):  # done meanwhile by another run: not done twice
            return False, dst
        try:
            return self._upscale(src, dst, overwrite=overwrite, quality=quality)
        except OutputTaken as exc:  # two runs wrote it at once: the first one in place is kept, whole
            return False, Path(exc.filename)

    def _upscale(self, src: Path, dst: Path, *, overwrite: bool, quality: int | None) -> tuple[bool, Path]:
        """`upscale_file` once `dst` was seen free; `OutputTaken` where another run took it since."""
        planes = self._streamed_planes(src, dst) or read_planes(src)
        final = storable_path(planes.mode, dst)
        if final != dst and final.exists():  # the PNG that holds what `dst`'s format cannot
            if os.path.samefile(final, src):
                raise UserError(f"{src}: {dst.suffix} cannot hold its upscale (transparency or 16 bits), and "
                                f"{final}, the PNG that would, is this input: name another output")
            if not overwrite:
                return False, final
        h, w = planes.color.shape[:2]
        out_bytes = int(planes.color.nbytes * self.scale ** 2)  # about: for the choice of the writer
        if final.suffix.lower() == ".png" and planes.mode in PNG_STRIP_MODES and out_bytes > STREAM_BYTES:
            full = self.full()
            oh, ow = full.up.output_shape(h, w)
            with png_strips(final, ow, oh, planes.mode, planes.info, replace=overwrite) as png:
                full.upscale_planes_in_strips(planes, png.write, desc=src.name)
            return True, final
        self._check_whole_output(src, final, planes)
        result = self.fast.upscale_planes(planes) if self.fast else None
        if result is None:  # not a plan hit, or an image the fast path does not take
            result = self.full().upscale_planes(planes, desc=src.name)
        del planes
        return True, save_planes(result, final, quality=quality, replace=overwrite)

    def _streamed_planes(self, src: Path, dst: Path):
        """Planes whose rows are decoded as the bands need them (`streamed.open_rows`), for an
        input whose output goes to PNG in strips and whose whole decode would not fit the memory
        budget; else None (`read_planes` decodes it whole, as for every other picture)."""
        head = streamed.probe(src)
        if (head is None or int(head.decoded_bytes * self.scale ** 2) <= STREAM_BYTES
                or storable_path(head.mode, dst).suffix.lower() != ".png"):
            return None  # the output is written whole (or small): so is the input decoded
        if self.max_memory is not None:
            budget = self.max_memory
        else:  # the memory planner's default, of the host's memory, where decoding happens
            import torch  # the strips need it anyway

            from .memory import free_memory
            budget = free_memory(torch.device("cpu")) // 2
        if head.whole_decode_bytes <= WHOLE_DECODE_SHARE * budget / max(1, self.args.jobs):
            return None  # images of --jobs share the budget, as their tiles do
        return streamed.open_rows(head)

    def _check_whole_output(self, src: Path, final: Path, planes) -> None:
        """A UserError when an output written whole (JPEG, WebP, PNG with alpha: Pillow encodes
        from the whole image) cannot fit in --max-memory beside what this process already holds
        (the model, its runtime: --max-memory bounds the whole process, as the tiles' plan does)."""
        if self.max_memory is None:
            return
        held = max(0, resident_bytes() - planes.color.nbytes - (0 if planes.alpha is None else planes.alpha.nbytes))
        output = whole_save_bytes(planes, self.scale)
        need = held + output
        if held >= self.max_memory:  # the floor is the process, not the picture
            raise UserError(f"--max-memory {_size(self.max_memory)} bounds this whole process, which holds "
                            f"about {_size(held)} before any picture (Python, torch, the model and its "
                            f"runtime): give more, e.g. {-(-(need + 2 ** 28) // 10 ** 8) / 10:g}GB "
                            "(the rest is room for the tiles)")
        if need > self.max_memory:
            strips = final.suffix.lower() == ".png" and planes.mode in PNG_STRIP_MODES
            how = ("raise --max-memory (PNGs are written in strips from 64 MB of output)" if strips
                   else "raise --max-memory, or remove the alpha first: a picture with alpha is encoded whole "
                        "in every format (PNGs without alpha are written in strips)" if planes.alpha is not None
                   else "write .png (written in strips) or raise --max-memory")
            raise UserError(f"{src}: its {final.suffix} output is encoded whole, about {_size(need)} "
                            f"at once with what this process holds, over --max-memory "
                            f"{_size(self.max_memory)}; {how}")


def whole_save_bytes(planes, scale: float) -> int:
    """Peak bytes of the upscaled planes of `planes` while they are saved whole (measured):
    the planes, their join with the alpha (`planes_to_pil`), and Pillow's own copy where it
    makes one (RGB and LA at 4 bytes a pixel; L, RGBA and 16-bit gray map the array)."""
    h, w, c = planes.color.shape
    pixels = output_size(h, scale) * output_size(w, scale)
    chans = c + (0 if planes.alpha is None else 1)
    out = pixels * chans * planes.color.itemsize
    joined = out if planes.alpha is not None else 0
    pil = 4 * pixels if planes.mode in ("RGB", "LA") else 0
    deep = out if planes.mode in ("RGB;16", "RGBA;16") else 0  # the PNG writer's big-endian copy
    return out + joined + pil + deep


def _size(n: int) -> str:
    """Bytes in words a reader compares: 1.2 GB, 35.0 MB, 12 KB."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"
