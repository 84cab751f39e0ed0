"""Real codecs for the codec study: encode and decode uint8 RGB images (Pillow) and frame
sequences (PyAV's ffmpeg encoders), returning the encoded bytes so rates are real sizes.

Image codecs (one quality setting per rate point, 1..100, higher = more bits):
  jpeg  Pillow/libjpeg, 4:2:0, optimized Huffman tables
  webp  Pillow/libwebp lossy, method 4
  avif  Pillow's AVIF (libavif), 4:2:0, speed 6
  png   lossless (one point: the no-codec reference)
Video codecs (one CRF per rate point, lower = more bits), yuv420p, tuned for PSNR, in Matroska:
  x264  libx264, preset medium        x265  libx265, preset medium
  av1   libsvtav1 preset 8 (or libaom-av1 cpu-used 6 where the ffmpeg has it)
"""

from __future__ import annotations

import difflib
import io
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class Codec:
    name: str
    kind: str                 # "image" or "video"
    ladder: tuple[int, ...]   # default rate points, from the fewest bits to the most
    setting: str              # what a rate point sets: "quality" or "crf"
    encoder: str = ""         # the ffmpeg encoder (video)


IMAGE_CODECS = {
    "jpeg": Codec("jpeg", "image", (5, 10, 20, 35, 50, 70, 90), "quality"),
    "webp": Codec("webp", "image", (5, 15, 30, 50, 70, 90), "quality"),
    "avif": Codec("avif", "image", (5, 15, 30, 45, 60, 75, 90), "quality"),
    "png": Codec("png", "image", (100,), "quality"),
}
VIDEO_CODECS = {
    "x264": Codec("x264", "video", (43, 38, 33, 28, 23, 18), "crf", "libx264"),
    "x265": Codec("x265", "video", (45, 40, 35, 30, 25, 20), "crf", "libx265"),
    "av1": Codec("av1", "video", (60, 53, 46, 39, 32, 25), "crf", "libsvtav1"),
}
CODECS = {**IMAGE_CODECS, **VIDEO_CODECS}
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "png": "PNG"}


def _av1_encoder() -> str | None:
    import av
    for enc in ("libsvtav1", "libaom-av1", "librav1e"):
        if enc in av.codecs_available:
            return enc
    return None


def _missing(name: str) -> str:
    """What this machine lacks to use codec `name` ("" when it has it)."""
    c = CODECS[name]
    if c.kind == "image":
        from PIL import features
        feature = {"webp": "webp", "avif": "avif"}.get(name)
        if feature and not features.check(feature):
            return (f"this Pillow cannot write {name.upper()}: install a Pillow built with {name} "
                    "(or pillow-avif-plugin)")
        return ""
    import av
    enc = _av1_encoder() if name == "av1" else c.encoder
    if enc is None or enc not in av.codecs_available:
        wanted = "libsvtav1, libaom-av1 or librav1e" if name == "av1" else c.encoder
        return f"PyAV's ffmpeg here has no {wanted} encoder"
    return ""


def usable_codecs() -> list[str]:
    """The codecs this machine can encode with."""
    return [n for n in CODECS if not _missing(n)]


# what other tools call these codecs (ffmpeg's encoder names, file extensions): not close in spelling
_OTHER_NAMES = {"jpg": "jpeg", "h264": "x264", "libx264": "x264", "avc": "x264", "h265": "x265",
                "hevc": "x265", "libx265": "x265", "libsvtav1": "av1", "libaom-av1": "av1", "svt-av1": "av1"}


def did_you_mean(name: str) -> str:
    """"did you mean jpeg? " for a mistyped or otherwise-named codec ("" where none is close):
    a suggestion only, as the model registry's, never taken in its place."""
    key = name.lower()
    close = [_OTHER_NAMES[key]] if key in _OTHER_NAMES else \
        [key] if key in CODECS else difflib.get_close_matches(key, list(CODECS), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def get_codec(name: str) -> Codec:
    """The codec called `name`, checked to be usable here; UserError otherwise (naming those that are)."""
    if name not in CODECS:
        usable = usable_codecs()
        here = f" (usable here: {', '.join(usable)})" if len(usable) < len(CODECS) else ""
        raise UserError(f"unknown codec {name!r}; {did_you_mean(name)}use one of {', '.join(CODECS)}{here}")
    missing = _missing(name)
    if missing:
        raise UserError(f"{missing}: leave {name} out (usable here: {', '.join(usable_codecs())})")
    c = CODECS[name]
    if c.kind == "image":
        return c
    return Codec(c.name, c.kind, c.ladder, c.setting, _av1_encoder() if name == "av1" else c.encoder)


def parse_ladder(codec: Codec, text: str | None) -> tuple[int, ...]:
    """"5,10,20" -> (5, 10, 20) checked for the codec's range; None -> the default ladder."""
    if not text:
        return codec.ladder
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--ladder {codec.name}={text}: expected integers like 10,30,50") from None
    lo, hi = (1, 100) if codec.setting == "quality" else (0, 63 if codec.name == "av1" else 51)
    bad = [v for v in values if not lo <= v <= hi]
    if not values or bad:
        raise UserError(f"--ladder {codec.name}: each {codec.setting} must be in {lo}..{hi}, got {text!r}")
    return values


# ------------------------------------------------------------------------------------- images

def encode_image(codec: Codec, rgb: np.ndarray, q: int) -> bytes:
    """uint8 HWC RGB -> the bytes of the encoded file."""
    from PIL import Image
    kwargs = {"jpeg": {"quality": q, "optimize": True, "subsampling": "4:2:0"},
              "webp": {"quality": q, "method": 4},
              "avif": {"quality": q, "speed": 6, "subsampling": "4:2:0"},
              "png": {"compress_level": 9}}[codec.name]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, _PIL_FORMAT[codec.name], **kwargs)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------- video

def _video_options(codec: Codec, q: int, threads: int) -> dict:
    if codec.encoder == "libx264":
        return {"crf": str(q), "preset": "medium", "tune": "psnr", "threads": str(threads)}
    if codec.encoder == "libx265":
        return {"crf": str(q), "preset": "medium", "tune": "psnr",
                "x265-params": f"log-level=error:pools={threads}:frame-threads={threads}"}
    if codec.encoder == "libsvtav1":
        return {"crf": str(q), "preset": "8", "svtav1-params": f"lp={threads}:tune=1"}
    if codec.encoder == "libaom-av1":
        return {"crf": str(q), "cpu-used": "6", "row-mt": "1", "threads": str(threads)}
    return {"qp": str(q)}  # librav1e


# libx265 refuses sides under 16 and corrupts its heap (the process aborts) on some frames under 32
# high, e.g. 48x24 (seen with PyAV 18's libx265): frames it can code, as (least width, height)
LEAST_FRAME = {"libx265": (16, 32)}


def check_frame_size(codec: Codec, width: int, height: int, what: str = "frames") -> None:
    """A UserError for `what` of `width` x `height` that the codec's encoder cannot code."""
    lw, lh = LEAST_FRAME.get(codec.encoder, (1, 1))
    if width < lw or height < lh:
        raise UserError(f"{codec.name} ({codec.encoder}) cannot code {what} ({width}x{height}): it needs at "
                        f"least {lw}x{lh} (smaller ones crash it); use a larger clip, or leave {codec.name} out")


def encode_video(codec: Codec, frames: list[np.ndarray], q: int, fps: Fraction,
                 threads: int = 1) -> tuple[bytes, int]:
    """uint8 HWC RGB frames (even H and W) -> (Matroska file bytes, video bitstream bytes)."""
    import av
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise UserError(f"frames of {w}x{h}: 4:2:0 video needs even sizes")
    check_frame_size(codec, w, h)  # before the encoder opens: it may take the process down
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    buf = io.BytesIO()
    bitstream = 0
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream(codec.encoder, rate=fps, options=_video_options(codec, q, threads))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = threads
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts = i
            for p in stream.encode(frame):
                bitstream += p.size
                out.mux(p)
        for p in stream.encode():
            bitstream += p.size
            out.mux(p)
    return buf.getvalue(), bitstream


def decode_video(data: bytes) -> list[np.ndarray]:
    import av
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's header tells: its frame size and frame count (None: not told)."""
    width: int
    height: int
    frames: int | None


def _still_image(path) -> UserError:
    return UserError(f"{path} is a still image, not a video clip: put it in an image folder to study "
                     "it with an image codec (jpeg, webp, avif, png)")


def probe_clip(path) -> ClipInfo:
    """A clip's header, read before any work: a UserError for a file that cannot be read, is no
    video, or is a still picture (FFmpeg opens a PNG, whatever its name, as a one-frame video)."""
    from pathlib import Path

    from ..media.animation import image_frame_count
    from ..media.video import STILL_IMAGE_FORMATS, frame_count, main_video_stream, open_input
    path = Path(path)
    container = open_input(path)  # first: it says what is wrong with a file it cannot read
    try:
        if image_frame_count(path) == 1 or container.format.name in STILL_IMAGE_FORMATS \
                or container.format.name.endswith("_pipe"):
            raise _still_image(path)
        vin = main_video_stream(container)
        return ClipInfo(vin.codec_context.width, vin.codec_context.height, frame_count(container))
    finally:
        container.close()


def _decode_frames(container, vin, path, max_frames: int, limit: int) -> tuple[list[np.ndarray], int]:
    """(the frames, the damaged packets skipped): a damaged packet loses its frame, and decoding
    goes on at the next key frame, as FFmpeg (and `upsample video`) does."""
    import av
    frames, damaged = [], 0
    for packet in container.demux(vin):
        try:
            decoded = packet.decode()
        except av.InvalidDataError:
            damaged += 1
            continue
        for f in decoded:
            frames.append(f.to_ndarray(format="rgb24"))
            if limit and len(frames) > limit:
                raise UserError(f"{path} has more than {limit} frames, more than the free memory holds "
                                f"while they are studied: pass --max-frames {limit} (or fewer)")
            if max_frames and len(frames) >= max_frames:
                return frames, damaged
    return frames, damaged


def read_frames(path, max_frames: int = 0, *, limit: int = 0) -> tuple[list[np.ndarray], Fraction]:
    """A clip's first `max_frames` frames (0: all) as uint8 RGB arrays, and its frame rate. A
    UserError for a bad file, or past `limit` frames (0: none; the memory they may take); a note
    for damaged packets and for a clip that ends before the frames its header announces."""
    import sys
    from pathlib import Path

    import av

    from ..media.video import frame_count, main_video_stream, open_input
    container = open_input(Path(path))
    try:
        vin = main_video_stream(container)
        fps = Fraction(vin.average_rate or vin.guessed_rate or 25)
        announced, exact = frame_count(container), bool(vin.frames)
        frames, damaged = _decode_frames(container, vin, path, max_frames, limit)
    except av.FFmpegError as exc:
        raise UserError(f"cannot decode {path}: {exc}") from None
    finally:
        container.close()
    if not frames:
        raise UserError(f"{path}: no decodable video frame")
    if damaged:
        print(f"note: {path}: {damaged} damaged packet(s) could not be decoded and were skipped "
              "(their frames are missing from the study)", file=sys.stderr)
    # a count from the duration may be one off; one from the header is exact
    short = announced and len(frames) < announced - (0 if exact else 1)
    if short and not (max_frames and len(frames) >= max_frames):
        print(f"note: {path}: {len(frames)} of the {announced} frames its header announces could be "
              f"decoded; the file is cut short or damaged (the study uses these {len(frames)})",
              file=sys.stderr)
    return frames, fps
