"""Large PNG and JPEG inputs decoded in bands of rows (libvips), so a picture too large for the
memory plan never exists whole in memory (as pixels: a progressive JPEG's decoder still holds
every DCT coefficient, 2 bytes a sample, which `Header.held_bytes` counts into the plan).

Pillow decodes a file whole (RGB at 4 bytes a pixel) and the array made from it is another copy:
a 20000 x 20000 RGB PNG is 2.8 GB before any upscaling. libvips (`pyvips`, its library shipped by
`pyvips-binary`) reads PNG and JPEG top to bottom (`access="sequential"`) and hands over the rows
asked for. Only what reads the same as the Pillow path comes here: 8-bit RGB or gray (palette and
1-bit PNGs expanded as Pillow expands them), 16-bit gray or RGB PNG, without alpha, upright (an
EXIF orientation would need the whole picture turned), not interlaced, and no metadata chunks
after a PNG's pixels (Pillow reads those, EXIF and XMP included, only by decoding the file).
Anything else returns None from `open_rows` and takes `imageio.read_planes`.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .imageio import PNG_SIGNATURE, Planes, _DEEP_GRAY, _is_deep_color_png, kept_info, open_image

# Pillow modes read as they are (or expanded as `planes_from_pil` expands them), by format.
_MODES = {"PNG": {"RGB", "L", "P", "1", *_DEEP_GRAY}, "JPEG": {"RGB", "L"}}


@dataclass(frozen=True)
class Header:
    """What the header of a file that can be streamed says: size, the planes it makes, and the
    ICC profile and EXIF the Pillow path would write back."""
    path: Path
    format: str
    width: int
    height: int
    channels: int
    dtype: np.dtype
    info: dict
    progressive: bool = False  # a progressive JPEG

    @property
    def held_bytes(self) -> int:
        """What the decoder itself keeps for the whole picture while the rows are read: a
        progressive JPEG's coefficients (at most 2 bytes for each of 3 samples a pixel, 4:4:4)."""
        return 2 * self.width * self.height * self.channels if self.progressive else 0

    @property
    def decoded_bytes(self) -> int:
        """The uint array of the whole picture (`read_planes`' result)."""
        return self.width * self.height * self.channels * self.dtype.itemsize

    @property
    def whole_decode_bytes(self) -> int:
        """About the memory of decoding the file whole: Pillow's image (RGB at 4 bytes a pixel)
        and the array made from it, alive at once."""
        pil = self.width * self.height * 4 if self.channels == 3 else self.decoded_bytes
        return pil + self.decoded_bytes

    @property
    def mode(self) -> str:
        """The mode of the planes made (`Planes.mode`)."""
        deep = self.dtype == np.uint16
        return ("I;16" if deep else "L") if self.channels == 1 else ("RGB;16" if deep else "RGB")


def probe(path: str | os.PathLike) -> Header | None:
    """The header of `path` when its pixels may be streamed, else None. Pillow reads the header
    (no pixels), with the checks and refusals of `open_image` (size limit, animation); what needs
    more than the header is checked by `open_rows`."""
    img = open_image(path, decode=False)
    try:
        return _header_of(Path(path), img)
    finally:
        img.close()


def _header_of(path: Path, img: Image.Image) -> Header | None:
    if img.mode not in _MODES.get(img.format, ()) or "transparency" in img.info:
        return None  # alpha (a tRNS chunk too), CMYK, other formats: the Pillow path
    if img.info.get("interlace"):
        return None  # libvips decodes an interlaced PNG whole anyway
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*EXIF", UserWarning)  # damaged: the tags read are kept
            exif = Image.Image.getexif(img)  # the base class's: PngImageFile's would decode the file
    except Exception:  # a broken EXIF block: the Pillow path reads the picture without it, said so
        return None
    if exif.get(0x0112, 1) in range(2, 9):
        return None  # turned upright by exif_transpose: the whole picture at once
    deep = img.mode in _DEEP_GRAY or _is_deep_color_png(path)
    channels = 1 if img.mode in ("L", "1", *_DEEP_GRAY) else 3
    info = kept_info(img, exif)
    progressive = img.format == "JPEG" and bool(img.info.get("progressive") or img.info.get("progression"))
    return Header(path, img.format, img.width, img.height, channels,
                  np.dtype(np.uint16 if deep else np.uint8), info, progressive)


def _png_has_trailing_chunks(path: Path) -> bool:
    """Whether chunks other than IDAT and IEND follow a PNG's first IDAT: only the chunk
    headers are read, seeking over the data."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return True
        seen_idat = False
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                seen_idat = True
            elif seen_idat:
                return True
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return False  # truncated: libvips says so when it reaches the end


class StreamedRows:
    """The rows of an image file as an H x W x C uint array that is never whole: `rows[y0:y1]`
    decodes down to row y1 and returns those rows as an array. Reads go forward only; the rows of
    the previous slice are kept, so consecutive slices may overlap (the bands' context rows)."""

    ndim = 3

    def __init__(self, image, header: Header):
        import pyvips
        self._region, self._error = pyvips.Region.new(image), pyvips.Error
        self.path, self.dtype = header.path, header.dtype
        self.shape = (header.height, header.width, header.channels)
        self.itemsize = self.dtype.itemsize
        self.nbytes, self.held_bytes = header.decoded_bytes, header.held_bytes
        self._kept, self._kept_at = self._empty(), 0  # the last slice returned, from row _kept_at

    def _empty(self) -> np.ndarray:
        return np.empty((0, *self.shape[1:]), self.dtype)

    def __getitem__(self, rows: slice) -> np.ndarray:
        y0, y1, step = rows.indices(self.shape[0])
        if step != 1 or y0 < self._kept_at:
            raise ValueError(f"rows are read forward only: asked {y0}:{y1} after {self._kept_at}")
        y1 = max(y0, y1)
        end = self._kept_at + len(self._kept)
        old = self._kept[y0 - self._kept_at:y1 - self._kept_at]  # empty past the kept rows
        new = self._fetch(max(end, y0), y1) if y1 > max(end, y0) else self._empty()
        out = np.concatenate([old, new]) if len(old) and len(new) else old if len(old) else new
        self._kept, self._kept_at = out, y0
        return out

    def _fetch(self, y0: int, y1: int) -> np.ndarray:
        h, w, c = self.shape
        try:
            data = self._region.fetch(0, y0, w, y1 - y0)
        except self._error as exc:
            detail = [line.strip() for line in str(exc).splitlines() if line.strip()][-1:] or ["read error"]
            raise UserError(f"cannot read image {self.path}: {detail[0]}; the file is corrupt or "
                            "truncated") from None
        return np.frombuffer(data, self.dtype).reshape(y1 - y0, w, c)


def open_rows(header: Header) -> Planes | None:
    """Planes whose colour is the `StreamedRows` of the file of `header`, or None when libvips
    reads it with other bands or depth than the Pillow path would (e.g. a gray palette)."""
    if header.format == "PNG" and _png_has_trailing_chunks(header.path):
        return None  # metadata after the pixels: the Pillow path reads it by decoding the file
    import pyvips
    try:
        image = pyvips.Image.new_from_file(str(header.path), access="sequential", fail_on="truncated")
    except pyvips.Error:
        return None  # what libvips cannot open, Pillow may: its errors are the known ones
    fmt = "ushort" if header.dtype == np.uint16 else "uchar"
    if (image.width, image.height, image.bands, image.format) != (header.width, header.height,
                                                                   header.channels, fmt):
        return None
    return Planes(StreamedRows(image, header), None, header.info)
