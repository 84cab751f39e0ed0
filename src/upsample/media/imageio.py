"""Image file edges: listing, reading to uint8 arrays, and atomic writing (temp name + rename)."""

from __future__ import annotations

import contextlib
import errno
import io
import math
import numbers
import os
import re
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ..errors import UserError
from .animation import ANIMATION_FORMATS

# Pillow refuses a PNG whose one compressed text or iCCP chunk inflates past 1 MB (MAX_TEXT_CHUNK)
# as if corrupt: ImageMagick's hex "Raw profile" XMP, a large ICC profile. All its text chunks stay
# under MAX_TEXT_MEMORY (64 MB), the guard that matters; one chunk may use all of it.
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY)

# Extensions Pillow can read that we treat as images when scanning folders.
IMAGE_EXTS = {".png", ".apng", ".jpg", ".jpeg", ".jfif", ".jpe", ".mpo", ".webp", ".bmp", ".dib", ".tif", ".tiff",
              ".ppm", ".pgm", ".pbm", ".pnm", ".gif", ".tga", ".ico", ".avif", ".jxl", ".jp2", ".j2k", ".jpf",
              ".jpx", ".qoi"}  # .jfif: browsers' name for a saved JPEG; .mpo: a stereo camera's JPEG


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """Image files under `folder` (sorted) and the other files that were skipped (a broken link
    among them: `skip_reason` says which). Hidden files and folders (a leading dot: macOS's
    ._photo.jpg resource forks, .git, .thumbnails) are left out, as shell globs leave them.
    Linked folders are followed (a dataset is often a folder of links), each real folder once; a
    folder that cannot be read is an error, not a silent gap in the data."""
    root = Path(folder)
    if not root.exists():
        raise UserError(f"folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a folder: {root}")
    files = sorted(walk_files(root) if recursive else [p for p in _visible(root) if not p.is_dir()])
    images = [p for p in files if p.is_file() and is_image_path(p)]
    skipped = [p for p in files if not (p.is_file() and is_image_path(p))]
    return images, skipped


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` but hidden ones (a leading dot: macOS's ._photo.jpg, .git,
    .thumbnails), as shell globs leave them; a folder that cannot be read is a UserError."""
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise UserError(f"cannot read the folder {folder} ({exc.strerror or exc}); fix its permissions "
                        "or move it out of the input") from None


def walk_files(root: Path) -> list[Path]:
    """Every visible non-folder entry under `root` (hidden files and folders left out, see
    `_visible`), following linked folders, each real folder once."""
    files, seen, todo = [], set(), [root]
    while todo:
        folder = todo.pop()
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or two links to one folder
            continue
        seen.add(real)
        for entry in _visible(folder):
            (todo if entry.is_dir() else files).append(entry)
    return files


def skip_reason(path: Path) -> str:
    """Why `list_images` skipped `path`, for the note that names it."""
    if path.is_symlink() and not path.exists():
        return "a broken link"
    if path.suffix.lower() in (".heic", ".heif", ".hif"):  # iPhone photos: say why, not "not an image"
        return "HEIC/HEIF pictures are not decoded here; convert it to JPEG or PNG"
    return "not an image file" if path.is_file() else "not a regular file"


def max_pixels() -> int | None:
    """The largest image (pixels) read: Pillow's decompression-bomb limit (2 x MAX_IMAGE_PIXELS,
    179 Mpx unless changed), None when lifted."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def set_max_pixels(pixels: int | None) -> None:
    """Read images of up to `pixels` (None or 0: any size). Pillow's limit is process-wide: only
    the command line (`--max-pixels`) changes it, at the user's word."""
    Image.MAX_IMAGE_PIXELS = pixels // 2 if pixels else None


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.0f} Mpx" if n >= 1e6 else f"{n:,} pixels"


def too_large(p: Path, exc: Exception) -> UserError:
    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    size = f" ({_megapixels(numbers[0])})" if numbers else ""
    limit = max_pixels()
    return UserError(f"{p} is too large{size}: over the {_megapixels(limit)} limit that guards against "
                     "decompression bombs; if you trust the file, raise it with --max-pixels (e.g. "
                     f"--max-pixels {math.ceil((numbers[0] if numbers else 2 * limit) / 1e6)}M, or 0 for none)")


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of an image file as it is read (`read_rgb`, `read_planes`): upright, turned
    as its EXIF orientation says (a phone's portrait photo is stored on its side), from the header,
    pixels unread and quietly (a large image's decompression-bomb warning); None where it cannot
    be read (what reads it later says why). An orientation only in a PNG's eXIf chunk after its
    pixels is not seen (Pillow, libpng and exiftool write it before them)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return _upright_size(img)
    except Image.DecompressionBombError:  # a size is what is asked: the guard is for the pixels
        return _size_past_limit(path)
    except Exception:  # noqa: BLE001 - an unreadable file is no evidence of a size
        layout = _bmp_mask_layout(Path(path))  # a BMP layout Pillow refuses, read here
        return (layout[0], abs(layout[1])) if layout else None


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """`img`'s size once `upright` has turned it, from the header: orientations 5 to 8 swap the
    sides. Pillow gives a TIFF's turned size already (it turns a TIFF as it loads)."""
    w, h = img.size
    if img.format == "TIFF":
        return w, h
    try:  # the base class's getexif: PngImageFile's would decode the pixels
        orientation = Image.Image.getexif(img).get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: reading the picture says so
        return w, h
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _size_past_limit(path: str | os.PathLike) -> tuple[int, int] | None:
    """The size of a picture over the decompression-bomb limit, from its header, as `Image.open`
    finds it but without the check (an x4 output of a 12 Mpx photo is over it: a rerun must still
    know it as an earlier output)."""
    try:
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                accepted = not accept or accept(prefix)  # a str: Pillow's warning, no match
                if accepted and not isinstance(accepted, str):
                    fp.seek(0)
                    with contextlib.suppress(SyntaxError, IndexError, TypeError, struct.error, OSError):
                        return _upright_size(factory(fp, os.fspath(path)))
    except Exception:  # noqa: BLE001 - as header_size
        return None
    return None


def open_image(path: str | os.PathLike, *, decode: bool = True) -> Image.Image:
    """Open and fully decode an image, turning every decoder failure into one UserError. An
    animation (GIF, APNG, WebP of several frames) is refused: its first frame is not the file.
    `decode=False`: the same checks (size limit, animation) on the header only, pixels unread
    (`streamed` decodes a large file in bands instead)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder, not an image file; name one image")
    try:
        # the warnings machinery is one for the process: header reads of `--jobs` threads take
        # turns (a record of another thread's would name the wrong file, and could leave the
        # process's warnings going to a dead list); the decode below runs side by side
        with _WARNINGS_HELD, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # Pillow's words on a damaged file: one note, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", ".*EXIF", UserWarning)  # one note later (`_exif_of`)
            for words in _METADATA_ONLY:  # real cameras' files: their pixels are whole
                warnings.filterwarnings("ignore", words, UserWarning)
            img = _bitfields_bmp(p, note=decode) or Image.open(p)  # a header look: the note comes later
            frames = _animation_frames(img, p)
        if img.format == "TIFF" and img.tag_v2.get(0x0112) in (5, 6, 7, 8):
            # Pillow turns a TIFF upright on load, but memory-maps an uncompressed gray or
            # palette one at the turned size (its pixels scrambled); read it without the map
            img.filename = ""
        if frames > 1:
            how = ("convert it to .gif or a video, then use `upsample video`" if img.format == "WEBP"
                   else f"upscale it with `upsample video {p} -o OUT.mp4`")  # FFmpeg: no animated WebP
            raise UserError(f"{p} is an animation of {frames} frames, not one picture: {how} (to train "
                            "or evaluate on it, convert it to a video such as .mp4, or take it out)")
        if img.format == "JPEG" and _jpeg_scan_is_empty(p):
            raise UserError(f"cannot read image {p}: its header is whole but no picture data follows it "
                            "(libjpeg would paint it gray); the file is damaged or was cut short: copy "
                            "it again from its source")
        if decode:
            if img.format == "TIFF" and getattr(img, "n_frames", 1) > 1:
                print(f"note: {p} holds {img.n_frames} pages; the first is upscaled", file=sys.stderr)
            img.load()
    except Image.DecompressionBombError as exc:
        raise too_large(p, exc) from None
    except PermissionError:
        raise UserError(f"cannot read image {p}: permission denied (check the file's owner and mode)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        # IndexError, struct.error: Pillow's parsers on a damaged header or frame index
        kind = _unread_kind(p) if isinstance(exc, UnidentifiedImageError) else None
        why = str(exc).replace(f" '{p}'", "").replace(f" {p}", "")  # Pillow's names the file again
        if kind is None and why.startswith(_DECODE_FAILURES):  # the header was read: the pixels are damaged
            kind = f"its pixel data is damaged or cut short ({why}); copy the file again from its source"
        raise UserError(f"cannot read image {p}: {kind}" if kind else
                        f"cannot read image {p}: {why}; the file is corrupt or not an image") from None
    damage = [w for w in caught if issubclass(w.category, UserWarning)]  # Pillow's words on bad data
    if decode and damage:  # read all the same, from a file its decoder found damaged: the user is told
        words = "; ".join(dict.fromkeys(str(w.message) for w in damage))
        print(f"note: {p}: the file is damaged ({words}); what could be read is used, check the result",
              file=sys.stderr)
    return img


_WARNINGS_HELD = threading.Lock()  # see `open_image`

# Pillow's warnings of odd metadata, not of damaged pixels (a camera's TIFF tag with more values
# than the standard's, a phone's JPEG whose MPO index Pillow does not follow, a favicon's entry)
_METADATA_ONLY = ("Metadata Warning", "Image appears to be a malformed MPO", "XMP data",
                  "Image was not the expected size")  # (an icon whose entry says another size)

# Pillow's words when a decoder fails inside the pixels of a file whose header it read
_DECODE_FAILURES = ("decoder error", "broken data stream", "image file is truncated", "unrecognized data stream",
                    "failed to read next frame", "Truncated File Read")


def _animation_frames(img: Image.Image, p: Path) -> int:
    """The frames of an animation (GIF, APNG, WebP), 1 for any other image. Pillow counts them by
    walking the file: one cut short inside its frames (a partial download) fails there with an
    IndexError or struct.error, said as a UserError naming `p`."""
    if img.format not in ANIMATION_FORMATS:
        return 1
    try:
        return int(img.n_frames) if getattr(img, "is_animated", False) else 1
    except (IndexError, struct.error, EOFError) as exc:
        why = str(exc) or type(exc).__name__
        raise UserError(f"cannot read image {p}: it ends inside its frames of animation ({why}); the file "
                        "is cut short or damaged: copy it again from its source") from None


def _jpeg_scan_is_empty(p: Path) -> bool:
    """Whether the first scan of a JPEG ends (EOI) right after its header: libjpeg decodes such a
    file to a flat gray picture with only a warning, which Pillow drops. The header's segments are
    seeked over, not read (an EXIF thumbnail or an ICC profile may be megabytes)."""
    with open(p, "rb") as f:
        f.seek(2)  # SOI
        while len(head := f.read(2)) == 2 and head[0] == 0xFF:
            if head[1] == 0xFF:  # a fill byte before the marker
                f.seek(-1, os.SEEK_CUR)
                continue
            if head[1] == 0xD9 or 0xD0 <= head[1] <= 0xD7 or head[1] == 0x01:  # EOI, RSTn, TEM: no length
                return head[1] == 0xD9
            size = f.read(2)
            if len(size) < 2:
                return False  # cut short: Pillow says so
            f.seek(struct.unpack(">H", size)[0] - 2, os.SEEK_CUR)
            if head[1] == 0xDA:  # SOS: the entropy-coded data follows its header
                return f.read(2) == b"\xff\xd9"
    return False


# BMP compressions whose pixels are laid out by bit masks: BI_BITFIELDS, BI_ALPHABITFIELDS
_BMP_MASKED = (3, 6)


def _bitfields_bmp(p: Path, note: bool = True) -> Image.Image | None:
    """The RGB(A) image of a 16- or 32-bit BMP laid out by bit masks (GIMP's and Photoshop's
    A8R8G8B8, X8R8G8B8, A1R5G5B5, A4R4G4B4 ...), decoded here: Pillow drops a 16-bit one's
    alpha, and refuses A4R4G4B4, BI_ALPHABITFIELDS and 32-bit masks in other orders. An alpha
    mask whose every value is 0 (a writer's "unused" byte) is read as opaque, as browsers do
    (said in a note, unless not `note`). None for any other file: Pillow reads it."""
    layout = _bmp_mask_layout(p)
    if layout is None:
        return None
    width, height, bpp, offset, masks, compression = layout
    if compression == 3 and (bpp, masks) in _PILLOW_MASKS:  # Pillow reads these exactly and faster
        return None if not masks[3] or not note else _opaque_if_alpha_unused(Image.open(p), p, note=True)
    Image._decompression_bomb_check((width, abs(height)))  # noqa: SLF001 - Pillow's own size guard
    stride = (width * bpp + 31) // 32 * 4
    with open(p, "rb") as f:
        f.seek(offset)
        data = f.read(stride * abs(height))
    if len(data) < stride * abs(height):
        raise OSError(f"the BMP's pixel data is cut short ({len(data):,} of {stride * abs(height):,} bytes)")
    rows = np.frombuffer(data, np.uint8).reshape(abs(height), stride)[:, :width * bpp // 8]
    pixels = rows.copy().view("<u2" if bpp == 16 else "<u4").astype(np.uint32)
    if height > 0:  # stored bottom-up
        pixels = pixels[::-1]
    channels = [_mask_channel(pixels, m) for m in masks if m]
    img = Image.fromarray(np.ascontiguousarray(np.dstack(channels)), "RGBA" if len(channels) == 4 else "RGB")
    return _opaque_if_alpha_unused(img, p, note=note)


# bit-mask layouts Pillow's BmpImagePlugin decodes as they are (its MASK_MODES): (bits, R, G, B, A masks)
_PILLOW_MASKS = {(32, (0xFF0000, 0xFF00, 0xFF, 0)), (32, (0xFF000000, 0xFF0000, 0xFF00, 0)),
                 (32, (0xFF, 0xFF00, 0xFF0000, 0xFF000000)), (32, (0xFF0000, 0xFF00, 0xFF, 0xFF000000)),
                 (16, (0xF800, 0x7E0, 0x1F, 0)), (16, (0x7C00, 0x3E0, 0x1F, 0))}


def _opaque_if_alpha_unused(img: Image.Image, p: Path, *, note: bool) -> Image.Image:
    """`img` (a bit-mask BMP with alpha), as RGB where its alpha is 0 everywhere (a writer's
    "unused" byte, as browsers read it), said in a note where `note`."""
    img.load()
    if img.mode == "RGBA" and not img.getchannel("A").getbbox():
        if note:
            print(f"note: {p}: its alpha is 0 in every pixel (unused, not transparent); read as opaque",
                  file=sys.stderr)
        return img.convert("RGB")
    return img


def _bmp_mask_layout(p: Path) -> tuple[int, int, int, int, tuple[int, ...], int] | None:
    """(width, height, bits a pixel, pixel offset, (R, G, B, A) masks, compression) of a 16- or 32-bit BMP
    with bit masks whose colour masks are set and contiguous; None for any other file."""
    try:
        with open(p, "rb") as f:
            head = f.read(14 + 124 + 16)
    except OSError:
        return None  # Pillow says why
    if len(head) < 54 or head[:2] != b"BM":
        return None
    offset, size = struct.unpack_from("<II", head, 10)
    width, height, _, bpp, compression = struct.unpack_from("<iiHHI", head, 18)
    if size not in (40, 52, 56, 108, 124) or bpp not in (16, 32) or compression not in _BMP_MASKED:
        return None
    count = 4 if size >= 56 or compression == 6 else 3  # a 40-byte header's masks follow it
    if len(head) < 54 + 4 * count:
        return None
    masks = struct.unpack_from(f"<{count}I", head, 54) + (0,) * (4 - count)
    usable = all(m and _contiguous(m) for m in masks[:3]) and (not masks[3] or _contiguous(masks[3]))
    if width <= 0 or height == 0 or not usable:
        return None
    return width, height, bpp, offset, masks, compression


def _low_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def _contiguous(mask: int) -> bool:
    run = mask >> _low_bit(mask)
    return run & (run + 1) == 0


def _mask_channel(pixels: np.ndarray, mask: int) -> np.ndarray:
    """The 8-bit channel that `mask` selects from `pixels`: fewer bits scaled as Pillow scales a
    16-bit BMP's, v * 255 // (2^bits - 1) (5-bit 31 -> 255), more cut to their top 8."""
    bits = bin(mask).count("1")
    levels = (pixels & mask) >> _low_bit(mask)
    if bits >= 8:
        return (levels >> (bits - 8)).astype(np.uint8)
    return (levels * 255 // ((1 << bits) - 1)).astype(np.uint8)


def _tiff_layout(p: Path) -> str | None:
    """What kind of samples a TIFF that Pillow does not open holds (float RGB, float16 from an
    HDR or a scientific tool), said with what to do; None where its first directory is unreadable."""
    from PIL import TiffImagePlugin
    try:
        with open(p, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged directory's warnings: the message says it
            ifd = TiffImagePlugin.ImageFileDirectory_v2(f.read(8))
            f.seek(ifd.next)
            ifd.load(f)
    except Exception:  # noqa: BLE001 - a damaged directory: the generic words
        return None
    bits, form = ((v if isinstance(v, tuple) else (v,))[0] for v in (ifd.get(258, 1), ifd.get(339, 1)))
    if not all(tag in ifd for tag in (256, 257)) or (form == 1 and bits in (1, 8, 16)):
        # no width or height, or samples Pillow reads: not an odd layout but a damaged file
        return (f"a TIFF whose directory of tags (at byte {ifd.next:,} of {p.stat().st_size:,}) is missing, "
                "cut short or damaged; copy the file again from its source")
    kind = {1: "integer", 2: "signed integer", 3: "floating-point"}.get(form, "unusual")
    return (f"a TIFF of {ifd.get(277, 1)} x {bits}-bit {kind} samples a pixel, a layout Pillow "
            "cannot decode; save it as an 8- or 16-bit integer TIFF or PNG (32-bit float: gray only)")


# Formats a phone or browser writes that Pillow has no decoder for here, by their first bytes.
_UNREAD_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
                  b"mif1": "HEIF", b"msf1": "HEIF", b"jxl ": "JPEG XL"}


def _unread_kind(p: Path) -> str | None:
    """Why Pillow identified no image in `p`, where the bytes tell more than "corrupt": an empty
    file, or a HEIC/HEIF (iPhone photos) or JPEG XL picture, whose decoders are not installed."""
    try:
        with open(p, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if not head:
        return "the file is empty (0 bytes); copy it again from its source"
    if head[:4] in (b"II*\0", b"MM\0*"):
        return _tiff_layout(p)
    name = (_UNREAD_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp"
            else "JPEG XL" if head[:2] == b"\xff\x0a" or head == b"\0\0\0\x0cJXL \r\n\x87\n" else None)
    if name is not None:
        return f"a {name} picture, which this install cannot decode; convert it to JPEG or PNG first"
    return _not_a_picture(p, head)


# First bytes of video files (MP4/MOV brands, Matroska/WebM, AVI) misnamed as pictures.
_VIDEO_BRANDS = (b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ",
                 b"dash", b"3gp4", b"3gp5", b"3g2a", b"MSNV", b"f4v ")


def _not_a_picture(p: Path, head: bytes) -> str | None:
    """What a file named as a picture is instead, by its first bytes: a video (an MP4 renamed
    .png), or text (an error page saved by a download tool); None where they do not tell."""
    video = ((head[4:8] == b"ftyp" and head[8:12] in _VIDEO_BRANDS) or head[:4] == b"\x1a\x45\xdf\xa3"
             or (head[:4] == b"RIFF" and head[8:12] == b"AVI "))
    if video:
        return (f"it is a video file, not a picture (whatever its .{p.suffix.lstrip('.')} name says); "
                "upscale it with `upsample video`, or rename it to its own extension")
    try:
        with open(p, "rb") as f:
            text = f.read(512).decode("utf-8")
    except (OSError, UnicodeDecodeError):  # binary, or a multi-byte character cut at 512: not told apart
        return None
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"it is a text file, not a picture (it begins {text[:40].strip()!r}); copy the real file again"
    return None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 HWC RGB array of an image file, upright (its EXIF orientation applied, as `read_planes`
    and cv2.imread do; `header_size` is its size), gray and palette images expanded to RGB, 16-bit
    levels taken to 8 bits as MATLAB's im2uint8 does, round(v / 257): Pillow reads a 16-bit RGB(A)
    PNG, TIFF or PPM by its high bytes (v >> 8, up to a level lower), so those are decoded at 16
    bits first (`read_planes`; its alpha is dropped, as here for 8 bits)."""
    with open_image(path, decode=False) as header:
        deep = header.mode in ("RGB", "RGBA") and any(";16" in str(t.args) for t in header.tile)
    if deep:
        color = read_planes(path, fill_hidden=False).color
        if color.dtype == np.uint16:  # else a layout only Pillow reads (read_planes said so in a note)
            eight = np.clip(np.round(color / 257.0), 0, 255).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(eight, 3, axis=2) if eight.shape[2] == 1 else eight)
    img = upright(open_image(path), path)
    if img.mode in _DEEP_GRAY:  # 16-bit levels in any byte order (a Mac's TIFF is I;16B)
        deep = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.round(deep), 0, 255).astype(np.uint8))
    elif img.mode == "F" and float(np.asarray(img).max(initial=0)) <= 1:  # float [0, 1]
        img = Image.fromarray(np.clip(np.round(np.asarray(img, np.float64) * 255), 0, 255).astype(np.uint8))
    return np.asarray(img.convert("RGB"))  # float 0..255: Pillow's levels, clipped


def check_new_file(out: Path, *, overwrite: bool, inputs=(), companions=()) -> None:
    """Refuse, before any work, an output file that is a folder, is one of the `inputs` (never
    replaced, not even with --overwrite), or exists - it or a `companions` file written with it
    (an OpenVINO .xml's .bin) - without `overwrite`."""
    for path in (out, *companions):
        if path.is_dir():
            raise UserError(f"-o {out}: {path} is a folder; name the output file" if path != out
                            else f"-o {out} is a folder; name the output file")
    if any(Path(i).exists() and out.exists() and os.path.samefile(out, i) for i in inputs):
        raise UserError(f"-o {out} is the input itself; name a new file (inputs are never replaced)")
    taken = [p for p in (out, *companions) if p.exists()]
    if taken and not overwrite:
        raise UserError(f"{taken[0]} exists; pass --overwrite to replace it")


def atomic_save(img: Image.Image, path: str | os.PathLike, *, replace: bool = True, **save_kwargs) -> None:
    """Save to a temporary file beside `path`, then rename: a crash never leaves a half file
    (`replace=False`: see `atomic_output`)."""
    path = Path(path)
    fmt = save_kwargs.pop("format", None) or Image.registered_extensions().get(path.suffix.lower())
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **save_kwargs), replace=replace)


class OutputTaken(FileExistsError):
    """The output name was taken by another process (another run writing the same file) while
    this one was being written: it is kept, this one's file is dropped."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".part", *, replace: bool = True):
    """Yield a temporary path beside `path` (named .NAME.XXXX`suffix`); on success it becomes
    `path` (os.replace) with the usual permissions, on failure it is removed: a crash or an
    interrupt never leaves a half-written file. `replace=False`: a file that took the name
    meanwhile (another run writing the same output) is kept, and `OutputTaken` raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name, suffix), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        if replace:
            os.replace(tmp, path)
        else:
            _claim(Path(tmp), path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# link() errors of file systems without hard links (FAT, exFAT, some network and FUSE mounts)
_NO_HARD_LINKS = {getattr(errno, name) for name in ("EPERM", "EXDEV", "ENOTSUP", "EOPNOTSUPP", "ENOSYS")
                  if hasattr(errno, name)}


def _claim(tmp: Path, path: Path) -> None:
    """Give the finished `tmp` the name `path` unless a file has it: a hard link takes the name
    only if it is free (two runs writing one output: the first one kept, whole), then the
    temporary name goes. Where hard links are not made, a check then a rename (a narrow race)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputTaken(errno.EEXIST, "written meanwhile by another process", str(path)) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise OutputTaken(errno.EEXIST, "written meanwhile by another process", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


# The longest file name, in bytes, of common file systems (ext4, APFS, NTFS in UTF-16 units)
NAME_MAX = 255


def _temp_prefix(name: str, suffix: str) -> str:
    """".NAME." for a temporary file beside NAME, NAME cut so that the temporary name (with
    mkstemp's 8 letters and `suffix`) stays within `NAME_MAX` bytes: a 250-byte name is valid, its
    temporary one would not be."""
    room = NAME_MAX - 2 - 8 - len(os.fsencode(suffix))
    raw = os.fsencode(name)
    return f".{os.fsdecode(raw[:room]) if len(raw) > room else name}."


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`data` as the whole content of `path`, written under a temporary name, on the disk (fsync:
    after a power cut the name holds these bytes or none, not zeros of their length), then renamed."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
        fsync_file(tmp)


def fsync_file(path: str | os.PathLike) -> None:
    """Put the file `path` on the disk before it is renamed into place (see atomic_write_bytes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, replace: bool = True) -> None:
    """`write(tmp)` to a temporary file beside `path` (NAME.XXXX.EXT.part), then rename it
    (`replace=False`: see `atomic_output`)."""
    with atomic_output(path, suffix=Path(path).suffix + ".part", replace=replace) as tmp:
        write(str(tmp))


# --- Images as planes, for inference: colour + optional alpha, uint8 or uint16, any PIL mode in. ---

# PIL modes read as 16-bit gray. "I" (32-bit int) is what some decoders give for 16-bit PNG/TIFF.
_DEEP_GRAY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Output file formats by extension and the image modes each can store.
SAVE_FORMATS = {
    "png": ("PNG", {"RGB", "RGBA", "L", "LA", "I;16", "LA;16", "RGB;16", "RGBA;16"}),
    "jpg": ("JPEG", {"RGB", "L"}),
    "jpeg": ("JPEG", {"RGB", "L"}),
    "jfif": ("JPEG", {"RGB", "L"}),  # browsers' name of a saved JPEG: `--ext same` keeps it
    "jpe": ("JPEG", {"RGB", "L"}),
    "webp": ("WEBP", {"RGB", "RGBA", "L", "LA"}),  # LA as RGBA (WebP has no gray)
}


class Planes:
    """An image split for processing: `color` HxWx3 (RGB) or HxWx1 (gray) and `alpha` HxWx1 or
    None, both uint8 or both uint16; `info` carries the ICC profile and EXIF to write back."""

    def __init__(self, color: np.ndarray, alpha: np.ndarray | None = None, info: dict | None = None):
        if color.ndim != 3 or color.shape[2] not in (1, 3):
            raise ValueError(f"color must be HxWx1 or HxWx3, got {color.shape}")
        if color.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"color must be uint8 or uint16, got {color.dtype}")
        if alpha is not None and (alpha.shape != color.shape[:2] + (1,) or alpha.dtype != color.dtype):
            raise ValueError(f"alpha must be HxWx1 of the colour's dtype, got {alpha.shape} {alpha.dtype}")
        self.color, self.alpha, self.info = color, alpha, dict(info or {})

    @property
    def mode(self) -> str:
        """The PIL mode these planes make: RGB, RGBA, L, LA or I;16 (16-bit gray)."""
        gray, deep = self.color.shape[2] == 1, self.color.dtype == np.uint16
        if deep and gray and self.alpha is None:
            return "I;16"
        if deep:
            return "RGBA;16" if self.alpha is not None and not gray else "RGB;16" if not gray else "LA;16"
        return ("L" if gray else "RGB") + ("A" if self.alpha is not None else "")


def kept_info(img: Image.Image, exif: Image.Exif, gray: bool | None = None) -> dict:
    """What an output keeps of its source's metadata (`save_planes` writes it back): the ICC
    profile where it describes the output's pixels (RGB, or gray for gray ones - `gray`, else
    `img`'s mode, says which: a CMYK or Lab profile on the RGB output breaks colour-managed
    readers), `exif` (the source's EXIF, as read or as turned upright) where it holds tags, its
    resolution (`dpi`: kept as it is, as an editor's resample does) and a PNG's gAMA, cHRM and
    sRGB (`PNG_COLOUR_KEYS`)."""
    icc = img.info.get("icc_profile") or b""
    gray = Image.getmodebase(img.mode) == "L" if gray is None else gray
    space = b"GRAY" if gray else b"RGB "  # the header's colour space
    info = {"icc_profile": icc} if icc[16:20] == space else {}
    if len(exif):
        info["exif"] = exif.tobytes()
    dpi = img.info.get("dpi")  # a TIFF's as Pillow's IFDRational
    if isinstance(dpi, tuple) and len(dpi) == 2 and all(isinstance(v, numbers.Real) and 1 <= v <= 65535 for v in dpi):
        info["dpi"] = tuple(float(v) for v in dpi)  # JPEG's density field holds up to 65535
    # a PNG's own colour description (how viewers show it; PNG outputs write it back)
    info.update({k: img.info[k] for k in PNG_COLOUR_KEYS if k in img.info})
    return info


PNG_COLOUR_KEYS = ("gamma", "chromaticity", "srgb")  # Pillow's names for gAMA, cHRM and sRGB


def png_metadata_chunks(info: dict, size: tuple[int, int] | None = None) -> list[tuple[bytes, bytes]]:
    """The (type, body) chunks that carry `kept_info`'s metadata in a PNG: gAMA, cHRM, then
    iCCP or sRGB (the format allows one of them), pHYs, then eXIf (with the picture's `size`)."""
    chunks = []
    if info.get("gamma"):
        chunks.append((b"gAMA", struct.pack(">I", round(info["gamma"] * 100000))))
    if info.get("chromaticity") and len(info["chromaticity"]) == 8:
        chunks.append((b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in info["chromaticity"]))))
    if info.get("icc_profile"):
        chunks.append((b"iCCP", b"icc\x00\x00" + zlib.compress(info["icc_profile"])))
    elif info.get("srgb") is not None:
        chunks.append((b"sRGB", bytes([int(info["srgb"])])))
    if info.get("dpi"):
        chunks.append((b"pHYs", struct.pack(">IIB", *(round(v / 0.0254) for v in info["dpi"]), 1)))  # per metre
    if info.get("exif"):
        exif = exif_of_size(info["exif"], size) if size else info["exif"]
        chunks.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    return chunks


def exif_of_size(exif: bytes, size: tuple[int, int]) -> bytes:
    """`exif` with the PixelXDimension/PixelYDimension a camera wrote set to the `size` (width,
    height) of the picture written, where it has them; else as it is."""
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        sub = parsed.get_ifd(0x8769)  # the Exif IFD
        if 0xA002 not in sub and 0xA003 not in sub:
            return exif
        sub[0xA002], sub[0xA003] = size
        return parsed.tobytes()
    except Exception:  # noqa: BLE001 - a block Pillow wrote but cannot read back: left as it is
        return exif


def _exif_of(img: Image.Image, source=None) -> Image.Exif:
    """`img`'s EXIF. A block Pillow cannot parse (a broken editor's, a cut APP1) is left out, with a
    note, rather than stop the picture; Pillow's warnings of a damaged one become one note."""
    where = f"{source}: " if source else ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif = img.getexif()
        except (SyntaxError, ValueError, OSError, EOFError, struct.error, KeyError, TypeError) as exc:
            print(f"note: {where}the EXIF block cannot be read ({exc}); written without it", file=sys.stderr)
            return Image.Exif()
    if any("EXIF" in str(w.message) for w in caught):
        print(f"note: {where}the EXIF block is damaged; the tags that could be read are kept", file=sys.stderr)
    return exif


def planes_from_pil(img: Image.Image, source=None) -> Planes:
    """Split a PIL image into planes: palette -> RGB (RGBA when it has transparency), a colour
    key (PNG tRNS on gray or RGB) -> alpha, 1-bit -> L,
    16-bit gray kept as uint16, premultiplied and exotic modes converted to their plain kin."""
    info = kept_info(img, _exif_of(img, source))  # `source`: the file, named in notes
    if img.mode == "CMYK" and (img.info.get("icc_profile") or b"")[16:20] == b"CMYK":
        img = _cmyk_to_srgb(img)  # print files (Photoshop, InDesign): colours as viewers show them
    mode = img.mode
    if mode in _DEEP_GRAY:
        arr = np.asarray(img)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise UserError(f"a 32-bit integer picture with values outside 0..65535 (from {arr.min()} to "
                            f"{arr.max()}): scale it into 0..65535 and save it as a 16-bit PNG or TIFF")
        key = img.info.get("transparency")  # a 16-bit PNG's tRNS: the gray value that is clear
        alpha = (np.where(arr == key, 0, 65535).astype(np.uint16)[..., None]
                 if isinstance(key, int) else None)
        return Planes(arr.astype(np.uint16)[..., None], alpha, info)
    if mode == "F":
        return Planes(_float_to_uint16(np.asarray(img))[..., None], None, info)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img = _keyed_convert(img, "RGBA" if has_alpha else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("La",):
        img = img.convert("LA")
    elif mode in ("L", "RGB") and "transparency" in img.info:  # a PNG colour key (tRNS): alpha
        img = _keyed_convert(img, "LA" if mode == "L" else "RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, LAB, YCbCr, HSV, RGBa, RGBX ...
        has_alpha = mode in ("RGBa", "LA", "La", "PA") or "transparency" in img.info  # LAB's A is a colour
        img = img.convert("RGBA" if has_alpha else "RGB")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if img.mode in ("LA", "RGBA"):
        color, alpha = np.ascontiguousarray(arr[..., :-1]), np.ascontiguousarray(arr[..., -1:])
        return Planes(color, alpha, info)
    return Planes(np.ascontiguousarray(arr), None, info)


def _keyed_convert(img: Image.Image, mode: str) -> Image.Image:
    """`img.convert(mode)`, where its transparent colour key (info["transparency"], set by hand or
    by another tool) that is no colour or index of its mode is one UserError, not Pillow's bare
    TypeError / ValueError."""
    try:
        return img.convert(mode)
    except (TypeError, ValueError) as exc:
        if "transparency" not in img.info:
            raise
        raise UserError(f"the picture's transparent colour key {img.info['transparency']!r} is no {img.mode} "
                        f"colour ({exc}); remove it (del img.info['transparency'])") from None


def fill_hidden_colour(planes: Planes) -> Planes:
    """`planes` with the colour of each fully transparent pixel replaced by that of the nearest
    visible one. That colour shows nowhere, but is often black or left-over garbage, and an
    upscaler mixes it into the visible pixels beside it: a dark fringe along every transparent
    edge (Real-ESRGAN's output has it). Filled from the edge ("alpha bleeding", as game engines
    prepare textures), the pixels at an edge see only the edge's own colours. Visible pixels, and
    the alpha, are unchanged."""
    alpha = planes.alpha
    if alpha is None:
        return planes
    hidden = alpha[..., 0] == 0
    if not hidden.any() or hidden.all():
        return planes
    from scipy import ndimage  # only for pictures with transparency
    rows, cols = ndimage.distance_transform_edt(hidden, return_distances=False, return_indices=True)
    return Planes(planes.color[rows, cols], alpha, planes.info)


def _cmyk_to_srgb(img: Image.Image) -> Image.Image:
    """A CMYK image with its CMYK ICC profile, converted through that profile to sRGB (the
    output is untagged, which readers take as sRGB), with the profile's rendering intent. Pillow's
    plain CMYK -> RGB formula ignores the profile: its colours are far from what colour-managed
    viewers show (a mean error of 14 levels against 4 on a photo sent to CMYK and back)."""
    from PIL import ImageCms  # lcms: loaded only for such files
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
        intent = ImageCms.getDefaultIntent(source)  # the profile's own, as Firefox uses it
        return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB",
                                         renderingIntent=intent)
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        print(f"note: the CMYK ICC profile cannot be used ({exc}); colours converted without it",
              file=sys.stderr)
        return img


def _float_to_uint16(arr: np.ndarray) -> np.ndarray:
    """A 32-bit float gray image (TIFF mode F) with values in [0, 1] as 16-bit gray; other
    ranges (HDR, depth maps) have no one meaning as brightness, so they are refused."""
    if arr.size and not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "infinite values"
        raise UserError(f"32-bit float image holds {bad}: only values in [0, 1] are read (as 16-bit "
                        "gray); replace them, or save it as 16-bit PNG/TIFF")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if not (lo >= 0 and hi <= 1):
        raise UserError(f"32-bit float image with values in [{lo:g}, {hi:g}]: only [0, 1] is read "
                        "(as 16-bit gray); scale it to [0, 1] or save it as 16-bit PNG/TIFF")
    return np.round(arr.astype(np.float64) * 65535).astype(np.uint16)


def planes_to_pil(planes: Planes) -> Image.Image:
    """The PIL image of `planes` (the inverse of `planes_from_pil` for the modes it makes)."""
    mode = planes.mode
    if mode.endswith(";16") and mode != "I;16":
        raise UserError(f"16-bit {mode[:-3]} images cannot be written by Pillow; "
                        "use numpy arrays through the Python API")
    if mode == "I;16":
        img = Image.fromarray(planes.color[..., 0])
    else:
        arr = planes.color if planes.alpha is None else np.concatenate([planes.color, planes.alpha], 2)
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr, mode)
    img.info.update(planes.info)
    return img


def read_planes(path: str | os.PathLike, *, fill_hidden: bool = True) -> Planes:
    """An image file as planes, with its EXIF orientation applied (pixels turned upright).
    16-bit RGB(A) PNGs, TIFFs and PPMs, which Pillow reads as 8-bit, are decoded by libvips (PNG)
    or FFmpeg (TIFF, PPM) to keep 16 bits.
    `fill_hidden`: the colour of fully transparent pixels filled from the visible ones, as an
    upscaler needs it (`fill_hidden_colour`); else as stored."""
    planes = _read_planes(path)
    return fill_hidden_colour(planes) if fill_hidden else planes


def _read_planes(path: str | os.PathLike) -> Planes:
    img = open_image(path)
    if _is_deep_color_png(path):
        return _read_deep_png(path, img)
    if _is_deep_color_tiff(img) or _is_deep_color_ppm(path, img):
        if _pillow_misreads_planes(img):  # FFmpeg's reading, or none: Pillow's is no check of it
            if 322 in img.tag_v2:  # TileWidth: FFmpeg decodes tiles as zeros
                raise UserError(f"cannot read image {path}: a 16-bit TIFF stored plane by plane in tiles, "
                                "which no decoder here reads; save it with contiguous samples (interleaved)")
            return _read_deep_color(path, img)
        try:
            return _checked_against_pillow(_read_deep_color(path, img), img, path)
        except UserError:  # a layout FFmpeg does not decode: Pillow's 8 bits, said so
            print(f"note: {path}: 16-bit RGB {img.format} read as 8-bit (FFmpeg cannot decode this layout)",
                  file=sys.stderr)
    return planes_from_pil(upright(img, path), path)


def upright(img: Image.Image, path) -> Image.Image:
    """`img` turned as its EXIF orientation says (a phone's portrait photo is stored on its side;
    cv2.imread, hence BasicSR, and viewers turn it too), its ICC profile kept. `header_size` gives
    the size it has. A broken EXIF block is a UserError naming `path`, not a guessed orientation."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*EXIF", UserWarning)  # damaged EXIF: one note (`_exif_of`)
            turned = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - any parse failure of the block
        raise UserError(f"cannot apply the EXIF orientation of {path}: {exc}; remove the EXIF block "
                        "(e.g. exiftool -all= FILE) or save the picture again") from None
    if turned is not img:
        turned.info.setdefault("icc_profile", img.info.get("icc_profile"))
    return turned


def storable_path(mode: str, path: str | os.PathLike) -> Path:
    """`path`, or the same name with .png when its format cannot hold an image of `mode`."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in SAVE_FORMATS:
        raise UserError(f"cannot write .{ext} files: use png, jpg or webp")
    return path if mode in SAVE_FORMATS[ext][1] else path.with_suffix(".png")


# The longest side each lossy format stores (libjpeg-turbo, libwebp): a 6000 px photo x3 is over
# WebP's; the encoder would fail only after the whole upscale, in words of its own.
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}


def _within_side_limit(planes: Planes, path: Path) -> Path:
    """`path`, or the same name with .png when the image is larger than its format stores; a
    UserError when that PNG exists (a fallback never replaces a file)."""
    fmt = SAVE_FORMATS[path.suffix.lower().lstrip(".")][0]
    h, w = planes.color.shape[:2]
    if max(h, w) <= MAX_SIDE.get(fmt, max(h, w)):
        return path
    png = path.with_suffix(".png")
    if png.exists():
        raise UserError(f"the {w}x{h} output is over {fmt}'s limit of {MAX_SIDE[fmt]} pixels a side, "
                        f"and {png}, the PNG that would hold it, exists: remove it, or name a .png output")
    return png


def save_planes(planes: Planes, path: str | os.PathLike, *, quality: int | None = None,
                replace: bool = True) -> Path:
    """Write planes atomically; the format comes from the extension. A format that cannot hold the
    image (alpha or 16-bit in JPEG, 16-bit in WebP, a side over `MAX_SIDE`) is replaced by PNG:
    returns the path written. `replace=False`: `OutputTaken` where another process wrote that
    path meanwhile (see `atomic_output`)."""
    path = _within_side_limit(planes, storable_path(planes.mode, path))
    fmt = SAVE_FORMATS[path.suffix.lower().lstrip(".")][0]
    if planes.mode in _DEEP_PNG_MODES:  # Pillow writes these as 8-bit
        h, w = planes.color.shape[:2]
        with png_strips(path, w, h, planes.mode, planes.info, replace=replace) as png:
            png.write(planes.color if planes.alpha is None else np.concatenate([planes.color, planes.alpha], 2))
        return path
    img = planes_to_pil(planes)
    kwargs: dict = {"format": fmt}
    if planes.info.get("icc_profile"):
        kwargs["icc_profile"] = planes.info["icc_profile"]
    if planes.info.get("exif") and fmt in ("PNG", "JPEG", "WEBP"):
        kwargs["exif"] = exif_of_size(planes.info["exif"], img.size)
    if planes.info.get("dpi") and fmt in ("PNG", "JPEG"):  # WebP keeps it in the EXIF only
        kwargs["dpi"] = planes.info["dpi"]
    if fmt == "JPEG" and len(kwargs.get("exif", b"")) > 65533:  # one APP1 marker; Pillow would raise
        print(f"note: {path}: the source's EXIF ({len(kwargs.pop('exif')):,} bytes) is over the 64 KB a "
              "JPEG holds; written without it (a .png output keeps it)", file=sys.stderr)
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo
        kwargs["pnginfo"] = PngInfo()
        for kind, body in png_metadata_chunks({k: planes.info.get(k) for k in PNG_COLOUR_KEYS}):
            kwargs["pnginfo"].add(kind, body)
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = 95 if quality is None else int(quality)
    atomic_save(img, path, replace=replace, **kwargs)
    return path


# --- 16-bit RGB(A) and gray + alpha PNG (Pillow reads and writes them only as 8-bit: gray +
# alpha as RGBA), read by libvips and written by `PngStripWriter`; 16-bit TIFF and PPM by FFmpeg. ---

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_deep_color_png(path: str | os.PathLike) -> bool:
    """A PNG whose header says 16 bits per sample, colour type RGB (2), gray + alpha (4) or RGBA (6)."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return (len(head) == 26 and head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
            and head[24] == 16 and head[25] in (2, 4, 6))


def _is_deep_color_tiff(img: Image.Image) -> bool:
    """A TIFF of 16-bit RGB(A) samples (Pillow opens it as 8-bit RGB)."""
    if img.format != "TIFF" or img.mode not in ("RGB", "RGBA"):
        return False
    bits = img.tag_v2.get(258, (8,))  # BitsPerSample
    return (bits if isinstance(bits, tuple) else (bits,))[0] == 16


def _pillow_misreads_planes(img: Image.Image) -> bool:
    """A 16-bit RGB TIFF stored plane by plane (PlanarConfiguration 2: scientific and some
    Photoshop files), which Pillow decodes as 8-bit planes: its pixels scrambled, no fallback."""
    return img.format == "TIFF" and img.tag_v2.get(284) == 2


def _is_deep_color_ppm(path, img: Image.Image) -> bool:
    """A binary PPM of more than 8 bits a sample (Pillow opens it as 8-bit RGB)."""
    if img.format != "PPM" or img.mode != "RGB":
        return False
    with open(path, "rb") as f:
        head = re.sub(rb"#[^\n]*", b" ", f.read(512)).split()  # P6 width height maxval
    return len(head) >= 4 and head[0] == b"P6" and head[3].isdigit() and int(head[3]) > 255


def _checked_against_pillow(planes: Planes, img: Image.Image, path) -> Planes:
    """`planes` as FFmpeg decoded a 16-bit TIFF or PPM, if their high bytes are Pillow's 8-bit
    reading; else a UserError (FFmpeg decodes a tiled TIFF as zeros, without an error)."""
    eight = np.asarray(ImageOps.exif_transpose(img).convert("RGBA" if planes.alpha is not None else "RGB"))
    deep = planes.color if planes.color.shape[2] == 3 else np.repeat(planes.color, 3, 2)
    deep = deep if planes.alpha is None else np.concatenate([deep, planes.alpha], 2)
    if deep.shape != eight.shape or np.abs((deep >> 8).astype(np.int16) - eight).mean() > 1:
        raise UserError(f"{path}: FFmpeg's 16-bit reading differs from Pillow's")
    return planes


def _read_deep_color(path: str | os.PathLike, img: Image.Image) -> Planes:
    """A 16-bit RGB(A) TIFF or PPM through FFmpeg (see `_read_planes` for its checks)."""
    import av
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (av.FFmpegError, StopIteration, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}; the file is corrupt") from None
    has_alpha = any(c.is_alpha for c in frame.format.components)  # rgba64, planar gbrap16, ya16 ...
    gray = frame.format.name.startswith(("ya", "gray"))  # replicated exactly into R, G and B
    return _deep_planes(frame.to_ndarray(format="rgba64le" if has_alpha else "rgb48le"), gray, has_alpha, img, path)


def _read_deep_png(path: str | os.PathLike, img: Image.Image) -> Planes:
    """A 16-bit RGB(A) or gray + alpha PNG through libvips (libspng/libpng). FFmpeg's PNG decoder
    garbled interlaced (Adam7) 16-bit RGB rows and corrupted the heap on larger ones (the process
    aborted); Pillow reads these as 8-bit. A tRNS colour key comes back as alpha, as from Pillow."""
    import pyvips
    try:
        arr = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="error").numpy()
    except pyvips.Error as exc:
        raise UserError(f"cannot read image {path}: {str(exc).strip().splitlines()[-1]}; the file is corrupt") from None
    bands = arr.shape[2]  # 2 (gray + alpha), 3 or 4: `_is_deep_color_png`'s colour types
    return _deep_planes(arr.astype(np.uint16, copy=False), bands == 2, bands in (2, 4), img, path)


def _deep_planes(arr: np.ndarray, gray: bool, has_alpha: bool, img: Image.Image, path) -> Planes:
    """Planes of a decoded 16-bit HxWxC array (colour first, alpha last; `gray`: its first
    plane is the picture), turned upright as the file's EXIF (read by Pillow, `img`) says."""
    exif = _exif_of(img, path)
    orientation = exif.get(0x0112, 1)
    if img.format == "TIFF":  # Pillow turned its own (8-bit) reading upright on load, and dropped the tag
        with Image.open(path) as head:
            orientation = head.tag_v2.get(0x0112, 1)
    if orientation in range(2, 9):  # turn upright exactly as Pillow would: on an index image
        h, w = arr.shape[:2]
        index = Image.fromarray(np.arange(h * w, dtype=np.int32).reshape(h, w))
        turn = Image.Exif()
        turn[0x0112] = orientation
        index.info["exif"] = turn.tobytes()
        arr = arr.reshape(h * w, -1)[np.asarray(ImageOps.exif_transpose(index))]
        exif.pop(0x0112, None)  # the pixels are upright now
    color = np.ascontiguousarray(arr[..., :1] if gray else arr[..., :3])
    alpha = np.ascontiguousarray(arr[..., -1:]) if has_alpha else None
    return Planes(color, alpha, kept_info(img, exif, gray=gray))  # Pillow has gray + alpha as RGBA


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# --- PNG written in strips: the output of a large image never has to be in memory at once. ---
# Pillow encodes a PNG from a whole image (and holds RGB at 4 bytes a pixel), so a 20k x 20k
# result would need 1.2 GB as an array plus 1.6 GB as a PIL image. The format itself streams:
# rows are filtered and deflated one after another into IDAT chunks, which zlib does here.

PNG_STRIP_MODES = {"L": (0, 1), "RGB": (2, 3), "I;16": (0, 1), "RGB;16": (2, 3)}  # colour type, channels
_DEEP_PNG_MODES = {"LA;16": (4, 2), "RGB;16": (2, 3), "RGBA;16": (6, 4)}  # and whole images of these
_PNG_WRITER_MODES = {**PNG_STRIP_MODES, **_DEEP_PNG_MODES}
_IDAT_BYTES = 1 << 20


def _paeth_rows(rows: np.ndarray, prev: np.ndarray, bpp: int) -> bytes:
    """PNG filter 4 (Paeth) of `rows` (n x stride raw bytes) below `prev` (the raw row above,
    zeros at the top), each row led by its filter byte. All inputs of the predictor are raw
    bytes, so whole rows go at once."""
    up = np.concatenate([prev[None], rows[:-1]]).astype(np.int16)
    raw = rows.astype(np.int16)
    left, upleft = np.zeros_like(raw), np.zeros_like(raw)
    left[:, bpp:], upleft[:, bpp:] = raw[:, :-bpp], up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    filtered = (raw - pred).astype(np.uint8)  # modulo 256, as the format wants
    return np.concatenate([np.full((len(rows), 1), 4, np.uint8), filtered], 1).tobytes()


class PngStripWriter:
    """`write(rows)` takes the next rows (n x W x C, uint8, or uint16 for the ;16 modes) of a
    `mode` image of `width` x `height`; the file is complete (renamed into place by the caller's
    `atomic_output`) once all rows are in and `close()` ran. ICC profile, EXIF and the PNG colour
    chunks (gAMA, cHRM, sRGB) are kept."""

    def __init__(self, f, width: int, height: int, mode: str, info: dict | None = None, level: int = 6):
        colour_type, self.channels = _PNG_WRITER_MODES[mode]
        self.deep = mode.endswith("16")
        self.f, self.width, self.height, self.done = f, width, height, 0
        self.bpp = self.channels * (2 if self.deep else 1)
        self.prev = np.zeros(width * self.bpp, np.uint8)
        self.zip, self.pending = zlib.compressobj(level), bytearray()
        f.write(PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16 if self.deep else 8,
                                                                colour_type, 0, 0, 0)))
        for chunk in png_metadata_chunks(info or {}, (width, height)):
            f.write(_png_chunk(*chunk))

    def write(self, rows: np.ndarray, chunk_rows: int = 64) -> None:
        if rows.shape[1:] != (self.width, self.channels) or self.done + len(rows) > self.height:
            raise ValueError(f"rows of shape {rows.shape} do not continue a {self.width}x{self.height} image")
        if not len(rows):
            return
        flat = rows.astype(">u2" if self.deep else np.uint8, copy=False).reshape(len(rows), -1)
        flat = flat.view(np.uint8).reshape(len(rows), -1)
        for i in range(0, len(flat), chunk_rows):
            part = flat[i:i + chunk_rows]
            self.pending += self.zip.compress(_paeth_rows(part, self.prev, self.bpp))
            self.prev = part[-1].copy()
            self._flush(_IDAT_BYTES)
        self.done += len(rows)

    def _flush(self, at_least: int) -> None:
        if len(self.pending) >= at_least:
            self.f.write(_png_chunk(b"IDAT", bytes(self.pending)))
            self.pending.clear()

    def close(self) -> None:
        if self.done != self.height:
            raise ValueError(f"{self.done} of {self.height} rows written")
        self.pending += self.zip.flush()
        self._flush(1)
        self.f.write(_png_chunk(b"IEND", b""))


@contextlib.contextmanager
def png_strips(path: str | os.PathLike, width: int, height: int, mode: str, info: dict | None = None,
               *, replace: bool = True):
    """A `PngStripWriter` for `path`, written under a temporary name and renamed when every row
    is in (an error or an interrupt leaves no file; `replace=False`: see `atomic_output`)."""
    with atomic_output(path, suffix=".png.part", replace=replace) as tmp, open(tmp, "wb") as f:
        writer = PngStripWriter(f, width, height, mode, info)
        yield writer
        writer.close()
