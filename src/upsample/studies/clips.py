"""`upsample make-clip IMAGE -o CLIP`: a short test clip of slow camera motion over a still image.

No clips ship with the project, so the video codec study makes its material from large benchmark
images (Urban100, B100): a window of --size moves over the image (pan), grows from the output
size to the widest view the image allows or shrinks back (zoom), or both, with smooth (ease in,
ease out) motion. Zoomed frames are resized with MATLAB's bicubic (`data.bicubic`, torch-free). The clip is lossless
(libx264rgb at qp 0, RGB kept bit for bit; FFV1 where that encoder is missing), so a codec study
measures every codec against exactly these frames. Written under a temporary name, then renamed;
each frame is encoded as it is made (never all held), with progress shown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..data.bicubic import imresize_array  # torch-free: make-clip says a bad argument at once
from ..errors import UserError
from ..inference.batch import check_writable
from ..media.imageio import atomic_write, check_new_file, read_rgb
from ..media.progress import track

MOTIONS = ("pan", "zoom", "panzoom")


def parse_wxh(text: str) -> tuple[int, int]:
    """"512x288" -> (512, 288), both even and positive."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size expects WIDTHxHEIGHT such as 512x288, got {text!r}") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise UserError(f"--size {text}: width and height must be positive and even (4:2:0 video)")
    return w, h


def _ease(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


def check_room(shape: tuple[int, ...], size: tuple[int, int], motion: str) -> float:
    """A UserError unless an image of `shape` (HWC) leaves room for `motion` at `size`;
    returns the widest zoom (the image's view with the clip's aspect, in clip sizes)."""
    w, h = size
    ih, iw = shape[:2]
    if iw < w or ih < h:
        raise UserError(f"the image is {iw}x{ih}, smaller than the clip's {w}x{h}: use a larger "
                        "image (Urban100) or a smaller --size")
    if motion == "pan" and (iw, ih) == (w, h):
        raise UserError(f"the image is exactly {w}x{h}, the clip's size: a pan over it would not "
                        "move; use a larger image or a smaller --size")
    zmax = min(iw / w, ih / h)  # widest view with the clip's aspect
    if motion in ("zoom", "panzoom") and zmax < 1.05:
        raise UserError(f"the image ({iw}x{ih}) leaves no room to zoom at {w}x{h}: use pan or a "
                        "smaller --size")
    return zmax


def clip_frame(img: np.ndarray, size: tuple[int, int], t: float, motion: str, zmax: float) -> np.ndarray:
    """The frame at eased time `t` (0..1) of `motion` over `img`, uint8 RGB of size (w, h)."""
    w, h = size
    ih, iw = img.shape[:2]
    z = 1.0
    if motion == "zoom":
        z = zmax - (zmax - 1.0) * t           # zoom in: wide view -> native pixels
    elif motion == "panzoom":
        z = 1.0 + (min(zmax, 2.0) - 1.0) * math.sin(math.pi * t) * 0.5  # out and back in
    bw, bh = min(iw, int(round(w * z))), min(ih, int(round(h * z)))
    if motion == "zoom":
        cx, cy = iw / 2.0, ih / 2.0
    else:  # pan along the diagonal, top-left to bottom-right
        cx = bw / 2.0 + (iw - bw) * t
        cy = bh / 2.0 + (ih - bh) * (0.25 + 0.5 * t)
    x0 = int(round(min(max(cx - bw / 2.0, 0), iw - bw)))
    y0 = int(round(min(max(cy - bh / 2.0, 0), ih - bh)))
    box = img[y0:y0 + bh, x0:x0 + bw]
    if (bw, bh) != (w, h):
        x = np.asarray(box, np.float64).transpose(2, 0, 1) / 255.0
        box = np.clip(np.round(imresize_array(x, size=(h, w)) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.ascontiguousarray(box)


def clip_frames(img: np.ndarray, size: tuple[int, int], n: int, motion: str) -> Iterator[np.ndarray]:
    """n uint8 RGB frames of size (w, h) moving over `img` (HWC uint8), made one at a time as
    they are taken (a minute of 1080p is 11 GB held at once); the room is checked at once."""
    zmax = check_room(img.shape, size, motion)
    return (clip_frame(img, size, _ease(i / max(n - 1, 1)), motion, zmax) for i in range(n))


def write_lossless(frames: Iterable[np.ndarray], path: Path, fps: Fraction, size: tuple[int, int]) -> str:
    """Write RGB frames of `size` (w, h) losslessly, each encoded as it comes; returns the
    encoder used."""
    import av
    if "libx264rgb" in av.codecs_available:
        enc, fmt, opts = "libx264rgb", "rgb24", {"qp": "0", "preset": "veryfast"}
    elif path.suffix.lower() == ".mkv":
        enc, fmt, opts = "ffv1", "bgr0", {}
    else:
        raise UserError("no lossless RGB encoder (libx264rgb) here: write a .mkv (FFV1)")
    w, h = size
    container = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov"}[path.suffix.lower()]

    def write(tmp: str) -> None:
        with av.open(tmp, "w", format=container) as out:
            stream = out.add_stream(enc, rate=fps, options=opts)
            stream.width, stream.height, stream.pix_fmt = w, h, fmt
            for i, f in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(f, format="rgb24")
                if fmt != "rgb24":
                    frame = frame.reformat(format=fmt)
                frame.pts = i
                for p in stream.encode(frame):
                    out.mux(p)
            for p in stream.encode():
                out.mux(p)
    atomic_write(path, write)
    return enc


def _check_source(image: str) -> None:
    if Path(image).is_dir():
        raise UserError(f"{image} is a folder: give one large image file (e.g. an Urban100 image)")


def make_clip(image: str, output: str, *, size: str = "512x288", seconds: float = 3.0,
              fps: str = "25", motion: str = "pan", overwrite: bool = False) -> str:
    """Write the clip of `motion` over `image` to `output` (an existing one only with
    `overwrite`); returns one line saying what it wrote."""
    wh = parse_wxh(size)
    if not 0 < seconds <= 60:
        raise UserError(f"--seconds must be in (0, 60], got {seconds}")
    try:
        rate = Fraction(fps).limit_denominator(1001)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--fps must be a number such as 25 or 30000/1001, got {fps!r}") from None
    if not 0 < rate <= 240:
        raise UserError(f"--fps must be in (0, 240], got {fps}")
    out = Path(output)
    if out.suffix.lower() not in (".mkv", ".mp4", ".mov"):
        raise UserError(f"-o {out}: use a .mkv, .mp4 or .mov file name")
    _check_source(image)
    check_new_file(out, overwrite=overwrite, inputs=[image])
    check_writable(out.parent, out)  # before the frames are made, not after
    n = int(round(seconds * rate))
    if n < 2:
        raise UserError(f"--seconds {seconds:g} at {float(rate):g} fps is {n} frame(s); a clip needs at least 2")
    frames = clip_frames(read_rgb(image), wh, n, motion)
    enc = write_lossless(track(frames, True, desc=out.name, unit="frame", total=n), out, rate, wh)
    return (f"{out}: {n} frames of {wh[0]}x{wh[1]} at {float(rate):g} fps ({float(n / rate):.2f} s, "
            f"{motion}), lossless {enc}, {out.stat().st_size / 1e6:.1f} MB")
