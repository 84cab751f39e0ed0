"""Video files through PyAV: opening and checking inputs, frame planes, encoders, output streams,
and carrying packets and frame properties over untouched.

No upscaling here (that is `inference.video`): only what decoding, encoding and remuxing need.
"""

from __future__ import annotations

import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import UserError

COPY_TYPES = ("audio", "subtitle", "data")  # streams copied packet for packet
COLOUR_TAGS = ("color_primaries", "color_trc", "colorspace", "color_range")


def is_planar_yuv(fmt: av.VideoFormat) -> bool:
    return (fmt.name.startswith("yuv") and len(fmt.components) == 3
            and sorted(c.plane for c in fmt.components) == [0, 1, 2])


def plane_view(plane, dtype) -> np.ndarray:
    """The pixels of a frame plane as a (height, width) array over the frame's own memory."""
    a = np.frombuffer(plane, dtype)
    return a.reshape(plane.height, plane.line_size // a.itemsize)[:, :plane.width]


def copy_colour_tags(src, dst) -> None:
    """The colour primaries, transfer, matrix and range of `src` onto `dst` (frames or codec
    contexts), those that `dst` takes."""
    for attr in COLOUR_TAGS:
        try:
            setattr(dst, attr, getattr(src, attr))
        except (AttributeError, ValueError, TypeError):
            pass


def carry_frame_props(src: av.VideoFrame, dst: av.VideoFrame, shift: int) -> None:
    """`src`'s timing (pts moved back by `shift`, time base, duration) and colour tags onto `dst`."""
    dst.pts = src.pts - shift if src.pts is not None else None
    dst.time_base = src.time_base
    dst.duration = src.duration
    copy_colour_tags(src, dst)


def open_input(path: Path):
    """The container of a video file with a decodable video stream, else a UserError."""
    if not path.exists():
        raise UserError(f"file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise UserError(f"cannot read {path}: not a video file, or it is damaged ({exc})") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} has no video stream")
    vin = container.streams.video[0]
    if vin.codec_context is None or vin.codec_context.format is None or not vin.codec_context.width:
        name = vin.codec_context.name if vin.codec_context is not None else "unknown"
        container.close()
        raise UserError(f"cannot decode the video of {path}: codec {name!r} is not supported here")
    return container


# FFmpeg's demuxers of single pictures: such an input is a still image, not a video
STILL_IMAGE_FORMATS = {"image2", "image2pipe"}
# picture formats FFmpeg could also "mux": never what a video output is meant to be
IMAGE_EXTENSIONS = {"png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pam",
                    "tga", "dpx", "exr", "jxl", "avif", "heic", "ico", "sgi", "xbm", "xwd", "pcx"}


def check_is_video(path: Path) -> None:
    """A UserError for an input that is a still image (FFmpeg opens a PNG or JPEG as a one-frame
    video): `upsample image` is the command for it."""
    container = open_input(path)
    try:
        fmt = container.format.name
    finally:
        container.close()
    if fmt in STILL_IMAGE_FORMATS or fmt.endswith("_pipe"):
        raise UserError(f"{path} is a still image, not a video: use `upsample image {path} -o DIR`")


def output_extensions() -> set[str]:
    """File extensions of the containers FFmpeg here can write, less picture formats."""
    exts = set()
    for name in av.formats_available:
        try:
            exts |= {e.strip().lower() for e in av.ContainerFormat(name, "w").extensions}
        except (ValueError, av.FFmpegError):
            continue  # an input-only format
    return exts - IMAGE_EXTENSIONS


def check_output(dst: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a folder, has no known video container
    extension, or exists (without `overwrite`)."""
    if dst.is_dir():
        raise UserError(f"-o {dst} is a folder; name the output video file, e.g. {dst / 'out.mp4'}")
    ext = dst.suffix.lower().lstrip(".")
    if not ext:
        raise UserError(f"-o {dst} has no extension: name the container, e.g. {dst}.mp4 (or .mkv, .mov, .webm)")
    if ext not in output_extensions():
        raise UserError(f"-o {dst}: .{ext} is not a video container this FFmpeg writes; use .mp4, "
                        ".mkv, .mov or .webm")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} exists; use --overwrite to replace it")


def first_frame(path: Path, vin_index: int):
    """The first decoded frame (for its rotation and format), from a separate read."""
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams[vin_index]):
            return frame
    raise UserError(f"{path}: the video stream has no decodable frame")


def frame_rate(vin) -> Fraction:
    """A video stream's frame rate (average, else guessed, else 25)."""
    return vin.average_rate or vin.guessed_rate or Fraction(25)


def frame_count(container) -> int | None:
    """The frames of the first video stream, from the header or the duration (None: unknown)."""
    vin = container.streams.video[0]
    return vin.frames or (int(float(container.duration / av.time_base) * float(frame_rate(vin)))
                          if container.duration else None)


def check_encoder(codec: str, pix_fmt: str | None, default_fmt: str) -> str:
    """The pixel format to encode with `codec`: `pix_fmt` if it takes it, else `default_fmt` (the
    input's) or the closest one it takes; a UserError for an unknown or non-video encoder."""
    try:
        enc = av.codec.Codec(codec, "w")
    except (av.FFmpegError, ValueError):
        raise UserError(f"unknown video encoder {codec!r}; try libx264, libx265 or libsvtav1") from None
    if enc.type != "video":
        raise UserError(f"{codec} is not a video encoder")
    formats = [f.name for f in (enc.video_formats or [])]
    if pix_fmt:
        if formats and pix_fmt not in formats:
            raise UserError(f"{codec} cannot encode {pix_fmt}; it takes {', '.join(formats)}")
        return pix_fmt
    if not formats or default_fmt in formats:
        return default_fmt
    deep = av.VideoFormat(default_fmt).components[0].bits > 8
    pick = next((f for f in formats if (av.VideoFormat(f).components[0].bits > 8) == deep), formats[0])
    print(f"note: {codec} cannot encode the input's {default_fmt}; using {pick}", file=sys.stderr)
    return pick


def open_output(path: Path, suffix: str):
    """An output container at `path`, of the kind `suffix` names (e.g. ".mp4")."""
    try:
        return av.open(str(path), "w")
    except (av.FFmpegError, ValueError) as exc:
        raise UserError(f"cannot write {suffix} videos: {exc}") from None


def close_after_error(out) -> None:
    """Close an output whose writing failed: the first error is the one to report, and the
    file is removed anyway."""
    try:
        out.close()
    except Exception:
        pass


def add_video_stream(out, vin, codec: str, size: tuple[int, int], pix_fmt: str, first,
                     crf: int | None, preset: str | None):
    """The encoded video stream of `out`: the input stream's timing, colour tags, aspect,
    metadata and rotation (of its `first` frame), `size` (h, w) and `pix_fmt`."""
    oh, ow = size
    vout = out.add_stream(codec, rate=frame_rate(vin))
    vout.width, vout.height, vout.pix_fmt = ow, oh, pix_fmt
    vout.time_base = vin.time_base
    vout.codec_context.time_base = vin.time_base
    copy_colour_tags(vin.codec_context, vout.codec_context)
    if vin.sample_aspect_ratio:
        vout.codec_context.sample_aspect_ratio = vin.sample_aspect_ratio
    options = {}
    if crf is not None:
        options["crf"] = str(crf)
    if preset is not None:
        options["preset"] = str(preset)
    vout.codec_context.options = options
    for key in ("language", "title", "handler_name"):
        if key in vin.metadata:
            vout.metadata[key] = vin.metadata[key]
    if getattr(first, "rotation", 0):
        vout.set_display_rotation(first.rotation)
    return vout


def add_copied_streams(container, out, skip: int) -> dict:
    """{input stream index: output stream} for each audio, subtitle and data stream (but `skip`)
    that the output container can hold; a note for each other one."""
    copies = {}
    for s in container.streams:
        if s.index == skip:
            continue
        if s.type not in COPY_TYPES:
            print(f"note: stream #{s.index} ({s.type}) is not copied", file=sys.stderr)
            continue
        try:
            copies[s.index] = out.add_stream_from_template(s)
        except (av.FFmpegError, ValueError) as exc:
            print(f"note: stream #{s.index} ({s.type}, {s.codec_context.name if s.codec_context else '?'}) "
                  f"cannot go into {Path(out.name).suffix}: dropped ({exc})", file=sys.stderr)
    return copies


def start_output(container, out) -> None:
    """Copy the input's container metadata (but its encoder tag) and write the header."""
    try:
        out.metadata.update({k: v for k, v in container.metadata.items() if k != "encoder"})
        out.start_encoding()
    except (av.FFmpegError, ValueError) as exc:
        raise UserError(f"cannot write this video: {exc}") from None


def remux(out, packet, stream, shift: int, lock: threading.Lock) -> None:
    """Mux a demuxed `packet` as it is into `stream` of `out`, its timestamps moved back by
    `shift` (in its time base); `lock` guards the muxer, which the encoder thread shares."""
    if shift:
        packet.pts = packet.pts - shift if packet.pts is not None else None
        packet.dts = packet.dts - shift if packet.dts is not None else None
    packet.stream = stream
    with lock:
        out.mux(packet)
