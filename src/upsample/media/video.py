"""Video files through PyAV: opening and checking inputs, frame planes, encoders, output streams,
and carrying packets and frame properties over untouched.

No upscaling here (that is `inference.video`): only what decoding, encoding and remuxing need.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import struct
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import UserError
from .animation import image_frame_count

COPY_TYPES = ("audio", "subtitle", "data")  # streams copied packet for packet
COLOUR_TAGS = ("color_primaries", "color_trc", "colorspace", "color_range")


def is_planar_yuv(fmt: av.VideoFormat) -> bool:
    """Y, U, V (and A) each in a plane of its own: yuv420p, yuva444p10le."""
    return (fmt.name.startswith("yuv") and len(fmt.components) in (3, 4)
            and sorted(c.plane for c in fmt.components) == list(range(len(fmt.components))))


def has_alpha(pix_fmt: str) -> bool:
    return any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)


# encoders whose alpha the containers that take them keep (WebM/Matroska: VP8/VP9's alpha
# beside each frame; MOV: ProRes 4444, PNG, QuickTime Animation): x265 takes yuva formats too,
# but no container here writes its alpha layer
ALPHA_ENCODERS = ("libvpx-vp9", "libvpx", "prores_ks", "png", "qtrle", "ffv1", "utvideo")
# FFmpeg's VP8/VP9 decoders drop the alpha that WebM keeps beside each frame; libvpx's decode it
ALPHA_DECODERS = {"vp9": "libvpx-vp9", "vp8": "libvpx"}


def keep_alpha_hint(muxer: str) -> str:
    """How to keep an input's alpha in a `muxer` output, for the note that says it was not."""
    return {"webm": "--codec libvpx-vp9 keeps it", "mov": "--codec prores_ks (ProRes 4444) keeps it",
            "matroska": "--codec libvpx-vp9 or prores_ks keeps it"}.get(
        muxer, "write .webm, or .mov with --codec prores_ks, to keep it")


def _alpha_decoder_name(vin) -> str | None:
    """libvpx's decoder for a VP8/VP9 stream that has an alpha channel (WebM's ALPHA_MODE 1)."""
    mode = {k.lower(): v for k, v in vin.metadata.items()}.get("alpha_mode")
    name = ALPHA_DECODERS.get(vin.codec_context.name)
    return name if mode == "1" and name in av.codecs_available else None


def video_decoder(vin):
    """What decodes the packets of the video stream `vin` (`.decode(packet)`): its own codec
    context, or a libvpx decoder where that is what gives the stream's alpha."""
    name = _alpha_decoder_name(vin)
    return vin.codec_context if name is None else av.CodecContext.create(name, "r")


def stream_pix_fmt(vin) -> str:
    """The pixel format the frames of `vin` decode to (`video_decoder`'s: VP9 with alpha gives
    yuva420p)."""
    fmt = vin.codec_context.format.name
    return "yuva420p" if _alpha_decoder_name(vin) and fmt == "yuv420p" else fmt


def plane_view(plane, dtype) -> np.ndarray:
    """The pixels of a frame plane as a (height, width) array over the frame's own memory."""
    a = np.frombuffer(plane, dtype)
    return a.reshape(plane.height, plane.line_size // a.itemsize)[:, :plane.width]


# SVT-AV1 logs its whole configuration to stderr by default, also when a container is probed
# for what it takes (`container_takes` opens the encoder): errors only, unless the user says
os.environ.setdefault("SVT_LOG", "1")

# How an RGB, palette or gray picture is written as YUV: BT.709 matrix, primaries and transfer
# (sRGB's primaries are BT.709's), limited range - what players assume of HD video
RGB_AS_YUV = {"color_primaries": 1, "color_trc": 1, "colorspace": 1, "color_range": 1}
YUV_PREFIXES = ("yuv", "nv", "p01", "p21", "p41", "y21", "uyvy", "yuyv", "yvyu", "ayuv", "vuy", "xv3", "v30")


def is_yuv(fmt_name: str) -> bool:
    return fmt_name.startswith(YUV_PREFIXES)


# libswscale's YUV <-> RGB with exact rounding and full-resolution chroma: its default (fast
# rounding, chroma by halves) took 8-bit BT.709 Y 180 to 178 through RGB; and the frame's own
# range (a full-range phone video was read as limited: its contrast stretched)
EXACT_SWS = (av.video.reformatter.Interpolation.BICUBIC | av.video.reformatter.Interpolation.ACCURATE_RND
             | av.video.reformatter.Interpolation.FULL_CHR_H_INT | av.video.reformatter.Interpolation.FULL_CHR_H_INP)


def frame_rgb(frame: av.VideoFrame, fmt: str = "rgb24") -> np.ndarray:
    """A decoded frame as RGB HWC (`fmt`: rgb24, rgb48le, rgba ...) by `EXACT_SWS`, read in the
    frame's own range: what `upsample video` feeds an RGB model, and what training takes of a video."""
    return frame.reformat(format=fmt, src_color_range=frame.color_range or None,
                          interpolation=EXACT_SWS).to_ndarray()


def colour_tags(src, out_fmt: str) -> dict:
    """The colour tags of `out_fmt` pictures made from `src` (a frame or codec context): its
    own, except that an RGB, palette or gray source written as YUV is converted to, and tagged
    as, `RGB_AS_YUV`: its own tags (matrix 0, "RGB") on YUV would have players show YUV planes as
    G, B and R, and libvpx refuses such frames."""
    fmt = getattr(src, "format", None)
    if fmt is not None and not is_yuv(fmt.name) and is_yuv(out_fmt):
        return dict(RGB_AS_YUV)
    return {attr: getattr(src, attr, None) for attr in COLOUR_TAGS}


UNSPECIFIED = {"colorspace": (None, 2), "color_primaries": (None, 0, 2)}  # (0 as a matrix is RGB)
MATRIX_OF = {1: "BT.709", 5: "BT.601", 6: "BT.601"}  # BT.470BG's matrix is SMPTE 170M's


def guessed_tags(width: int, height: int) -> dict:
    """What players take an untagged YUV picture of that size to be (mpv's rule; VLC's and the
    browsers' are alike): HD (1280 wide, or over 576 lines) BT.709; SD the BT.601 matrix, with
    PAL's primaries at 576 lines, NTSC's at 480 or 486, else BT.709's."""
    if width >= 1280 or height > 576:
        return {"colorspace": 1, "color_primaries": 1}
    return {"colorspace": 5 if height == 576 else 6,
            "color_primaries": {576: 5, 480: 6, 486: 6}.get(height, 1)}


def implied_tags(src, in_size: tuple[int, int], out_size: tuple[int, int]) -> dict:
    """The matrix and primaries to write on an upscale whose tags (`src`: a codec context, as
    copied from the input) leave them unspecified, where players would guess the output otherwise
    than the input (SD to HD): the input's guess, which its pixels were made for and decoded with
    (libswscale's default is BT.601), written down. Untagged 640x360 upscaled to 1920x1080 was shown as BT.709: (200, 30,
    90) as (214, 50, 90). Sizes (width, height)."""
    before, after = guessed_tags(*in_size), guessed_tags(*out_size)
    differs = {"colorspace": MATRIX_OF[before["colorspace"]] != MATRIX_OF[after["colorspace"]],
               "color_primaries": before["color_primaries"] != after["color_primaries"]}
    return {attr: before[attr] for attr, unset in UNSPECIFIED.items()
            if getattr(src, attr, None) in unset and differs[attr]}


def copy_colour_tags(src, dst) -> None:
    """The colour primaries, transfer, matrix and range of `src` onto `dst` (frames or codec
    contexts; see `colour_tags`), those that `dst` takes."""
    fmt = getattr(dst, "format", None)
    for attr, value in colour_tags(src, fmt.name if fmt is not None else "").items():
        try:
            setattr(dst, attr, value)
        except (AttributeError, ValueError, TypeError):
            pass


def carry_frame_props(src: av.VideoFrame, dst: av.VideoFrame, shift: int) -> None:
    """`src`'s timing (pts moved back by `shift`, time base, duration) and colour tags onto `dst`,
    and its closed captions (`captions`) as `dst.opaque` where `dst` lacks them (a frame made by
    libswscale from `src` has its side data, which x264 writes itself)."""
    dst.pts = src.pts - shift if src.pts is not None else None
    dst.time_base = src.time_base
    dst.duration = src.duration
    dst.opaque = captions(src) if captions(dst) is None else None
    copy_colour_tags(src, dst)


def captions(frame) -> bytes | None:
    """The CEA-608/708 closed captions that `frame` carries (ATSC A/53 cc_data triplets: a TV
    recording's, a camera's), or None."""
    for sd in getattr(frame, "side_data", None) or []:
        if sd.type.name == "A53_CC" and len(bytes(sd)) >= 3:
            return bytes(sd)
    return None


# AVStereo3DType -> x264's --frame-packing (side by side, top and bottom, frame sequence,
# checkerboard, lines, columns): the SEI by which players and TVs show a 3D video's two views
X264_FRAME_PACKING = {1: 3, 2: 4, 3: 5, 4: 0, 6: 2, 7: 1}


def stereo3d_type(frame) -> tuple[int, int] | None:
    """(type, flags) of `frame`'s stereo 3D side data (AVStereo3D), or None where it has none."""
    for sd in getattr(frame, "side_data", None) or []:
        if sd.type.name == "STEREO3D" and len(bytes(sd)) >= 8:
            return struct.unpack("<2i", bytes(sd)[:8])
    return None


def with_frame_packing(codec: str, options: dict, frame) -> dict:
    """`options` with x264's frame packing SEI of `frame`'s 3D layout (it was dropped: a side by
    side 3D video played as one wide picture on 3D TVs); unchanged where x264 cannot say it."""
    kind = stereo3d_type(frame)
    if codec != "libx264" or kind is None or kind[1] or kind[0] not in X264_FRAME_PACKING:
        return options
    params = [p for p in options.get("x264-params", "").split(":") if p]
    return {**options, "x264-params": ":".join(params + [f"frame-packing={X264_FRAME_PACKING[kind[0]]}"])}


def lost_metadata_notes(codec: str, frame) -> list[str]:
    """Notes on what of `frame` (the first) the output cannot keep with `codec`: closed
    captions but in H.264/HEVC, a 3D layout but in x264's frame packing, a 360 projection."""
    notes, kind = [], stereo3d_type(frame)
    if captions(frame) is not None and codec not in CAPTION_SEI_HEADERS:
        notes.append(f"the input's closed captions (CEA-608/708) are not kept: {codec} has no place for "
                     "them; H.264 (.mp4 or .mkv with libx264) keeps them")
    if kind is not None and kind[0] and with_frame_packing(codec, {}, frame) == {}:
        kept = not kind[1] and kind[0] in X264_FRAME_PACKING  # where x264 can say it
        notes.append(f"the input's stereo 3D layout is not kept in {codec}: 3D players show it as one flat "
                     "picture" + ("; H.264 (.mp4 or .mkv with libx264) keeps it" if kept else ""))
    if any(sd.type.name == "SPHERICAL" for sd in getattr(frame, "side_data", None) or []):
        notes.append("the input's 360/VR projection tag is not kept (PyAV cannot write it): players show the "
                     "output flat; re-tag it with a spatial media tool")
    return notes


# the encoders whose packets `with_captions` puts closed captions into: the SEI NAL unit's header
CAPTION_SEI_HEADERS = {"libx264": b"\x06", "h264": b"\x06", "libx265": b"\x4e\x01", "hevc": b"\x4e\x01"}


def caption_sei(codec: str, cc_data: bytes) -> bytes:
    """An Annex B SEI NAL unit of `codec` (H.264/HEVC) with `cc_data` as ATSC A/53 user data
    (ITU-T T.35, "GA94"), as x264 writes it from a frame's A53_CC side data."""
    count = min(len(cc_data) // 3, 31)
    payload = b"\xb5\x00\x31GA94\x03" + bytes([0x40 | count, 0xFF]) + cc_data[:3 * count] + b"\xff"
    body = bytes([4, len(payload)]) + payload + b"\x80"  # payload type 4: registered user data
    escaped = re.sub(b"\x00\x00(?=[\x00-\x03])", b"\x00\x00\x03", body)  # emulation prevention
    return b"\x00\x00\x00\x01" + CAPTION_SEI_HEADERS[codec] + escaped


def with_captions(packet, codec: str, cc_data: bytes):
    """`packet` (Annex B, as FFmpeg's x264/x265 wrappers give them; MP4 and Matroska muxers
    convert) with an SEI of `cc_data` in front: PyAV cannot hand side data to an encoder, and the
    captions of a recording were dropped without a word."""
    out = av.Packet(caption_sei(codec, cc_data) + bytes(packet))
    out.pts, out.dts, out.duration, out.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    out.is_keyframe = packet.is_keyframe
    return out


def main_video_stream(container):
    """The video stream FFmpeg's command line takes: not a picture attached as cover art (an
    MP4's covr, often stream 0), the largest, the default-flagged one on a tie of sizes."""
    def score(s):
        if is_cover_art(s):
            return 0
        area = (s.codec_context.width * s.codec_context.height) if s.codec_context else 0
        return 1 + area + 5_000_000 * bool(s.disposition & av.stream.Disposition.default)
    return max(container.streams.video, key=score)  # the first of equals


def is_cover_art(stream) -> bool:
    """A picture attached to the file (an MP4's covr): copied as it is where the output holds it."""
    return stream.type == "video" and bool(stream.disposition & av.stream.Disposition.attached_pic)


def file_url(path: Path) -> str:
    """What FFmpeg opens as the file `path`: its absolute path, as FFmpeg reads a name such as
    "take:2.mp4" as a URL of the protocol "take" ("Protocol not found"); a container's `name`
    (reopened by `_first_packet` and the subtitle reader) is this too."""
    return os.path.abspath(path)


# FFmpeg learns a stream's size and pixel format from its first 5 s / 5 MB: a TS recording whose
# picture starts after seconds of sound was "codec 'h264' is not supported here"; such a file is
# read again this far
LONG_PROBE = {"probesize": str(200 << 20), "analyzeduration": str(60_000_000)}


def _open(path: Path, options: dict | None = None):
    try:
        return av.open(file_url(path), options=options or {})
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied (check the file's owner and mode)") from None
    except (av.FFmpegError, ValueError, OSError) as exc:
        if _mp4_without_index(path):
            raise _no_index(path) from None
        raise UserError(f"cannot read {path}: not a video file, or it is damaged ({exc})") from None


def _no_index(path: Path) -> UserError:
    return UserError(f"cannot read {path}: this MP4/MOV has no index (moov box), or it is cut off: the "
                     "recording or download stopped before the file was finished, and FFmpeg cannot "
                     "read its frames without one; a repair tool (e.g. untrunc) rebuilds it")


def _mp4_without_index(path: Path) -> bool:
    """Whether `path` is an MP4/MOV whose top-level boxes (only their headers read) hold media
    but no whole moov: a phone or camera recording cut off (its index is written last), or a
    download cut short. FFmpeg says only "Invalid data found when processing input"."""
    kinds: list[bytes] = []  # of the boxes read whole, then of the one cut off
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while len(head := f.read(8)) == 8:
                length, kind = struct.unpack(">I4s", head)
                if length == 1:  # a 64-bit size follows
                    length = struct.unpack(">Q", f.read(8))[0] - 8
                kinds.append(kind)
                if length < 8 or f.tell() - 8 + length > size:
                    kinds.append(b"cut")  # this last box is cut off
                    break
                f.seek(length - 8, os.SEEK_CUR)
    except (OSError, struct.error):
        return False
    whole = kinds[:-2] if kinds[-1:] == [b"cut"] else kinds
    return kinds[:1] in ([b"ftyp"], [b"wide"], [b"free"], [b"mdat"]) and b"moov" not in whole \
        and (b"mdat" in kinds or kinds[-2:] == [b"moov", b"cut"])


def _described(vin) -> bool:
    """Whether FFmpeg found the size and pixel format of the video stream `vin`."""
    return vin.codec_context is not None and vin.codec_context.format is not None and bool(vin.codec_context.width)


def open_input(path: Path):
    """The container of a video file with a decodable video stream, else a UserError."""
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a video file; name one video")
    if path.is_file() and path.stat().st_size == 0:  # a failed download or export
        raise UserError(f"{path} is empty (0 bytes): not a video; write or download it again")
    container = _open(path)
    if container.streams.video and not _described(main_video_stream(container)):
        container.close()  # read again further: see LONG_PROBE
        container = _open(path, LONG_PROBE)
    if not container.streams.video:
        container.close()
        if _mp4_without_index(path):
            raise _no_index(path)
        raise UserError(f"{path} has no video stream")
    if all(is_cover_art(s) for s in container.streams.video):
        # an MP3/M4A/FLAC with its album art: that picture was "upscaled" into a one-frame MP4
        # whose frame did not decode
        container.close()
        raise UserError(f"{path} is audio with a cover picture, not a video: nothing to upscale frame "
                        "by frame")
    vin = main_video_stream(container)
    if not _described(vin):
        name = vin.codec_context.name if vin.codec_context is not None else "unknown"
        container.close()
        if name in av.codecs_available:  # its decoder is here: no picture of it could be read
            raise UserError(f"cannot decode the video of {path}: no {name} picture in it could be read "
                            "(the file is cut short or damaged)")
        if vin.codec_context is None:  # no codec FFmpeg knows named in the header: a damaged id, most often
            raise UserError(f"cannot decode the video of {path}: its header names no codec FFmpeg knows "
                            "(the file is damaged, or made by a tool this install cannot read); copy it "
                            "again, or convert it to H.264 with another tool")
        raise UserError(f"cannot decode the video of {path}: codec {name!r} is not supported here; "
                        "convert it to H.264 with another tool")
    return container


# FFmpeg's demuxers of single pictures: such an input is a still image, not a video
STILL_IMAGE_FORMATS = {"image2", "image2pipe"}
# picture formats FFmpeg could also "mux": never what a video output is meant to be
IMAGE_EXTENSIONS = {"png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pam",
                    "tga", "dpx", "exr", "jxl", "avif", "heic", "ico", "sgi", "xbm", "xwd", "pcx"}


# an IP camera's Motion JPEG stream (.mjpeg, multipart .mjpg): Pillow reads its first picture
# as a still JPEG, and the video was refused as a still image
MJPEG_STREAMS = {"mjpeg", "mpjpeg"}


def _demuxer_name(path: Path) -> str | None:
    """The FFmpeg demuxer that opens `path` (None: none does)."""
    try:
        with av.open(file_url(path)) as c:
            return c.format.name
    except (av.FFmpegError, ValueError, OSError):
        return None


def check_is_video(path: Path) -> None:
    """A UserError for an input that is a still image (FFmpeg opens a PNG, JPEG or one-frame GIF
    as a one-frame video: `upsample image` is the command for it) or an animation FFmpeg here
    cannot decode frame by frame (animated WebP). Animated GIF and APNG are videos here."""
    frames = image_frame_count(path)
    if frames == 1 and _demuxer_name(path) not in MJPEG_STREAMS:
        raise UserError(f"{path} is a still image, not a video: use `upsample image {path} -o DIR`")
    animated = UserError(f"{path} is an animation of {frames} frames that FFmpeg here cannot decode "
                         "frame by frame; convert it to .gif or a video first")
    try:
        container = open_input(path)
    except UserError:
        if frames:
            raise animated from None
        raise
    try:
        fmt = container.format.name
    finally:
        container.close()
    if fmt in STILL_IMAGE_FORMATS or fmt.endswith("_pipe"):
        if frames:
            raise animated
        raise UserError(f"{path} is a still image, not a video: use `upsample image {path} -o DIR`")


def source_pix_fmt(path: Path) -> str:
    """The pixel format of a video file's main video stream."""
    container = open_input(path)
    try:
        return stream_pix_fmt(main_video_stream(container))
    finally:
        container.close()


def output_extensions() -> set[str]:
    """File extensions of the containers FFmpeg here can write, less picture formats."""
    exts = set()
    for name in av.formats_available:
        try:
            exts |= {e.strip().lower() for e in av.ContainerFormat(name, "w").extensions}
        except (ValueError, av.FFmpegError):
            continue  # an input-only format
    return exts - IMAGE_EXTENSIONS


# containers whose encoders make palette pictures: refused (256 colours ruin an upscaled video)
PALETTE_CONTAINERS = {"gif", "apng"}


def check_output(dst: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a folder, has no known video container
    extension, is an animated-picture format, or exists (without `overwrite`)."""
    if dst.is_dir():
        raise UserError(f"-o {dst} is a folder; name the output video file, e.g. {dst / 'out.mp4'}")
    ext = dst.suffix.lower().lstrip(".")
    if not ext:
        raise UserError(f"-o {dst} has no extension: name the container, e.g. {dst}.mp4 (or .mkv, .mov, .webm)")
    if ext in PALETTE_CONTAINERS:
        raise UserError(f"-o {dst}: .{ext} output is not supported (256-colour palette frames); write "
                        ".mp4 or .webm (browsers loop a muted .webm/.mp4 like a GIF)")
    if ext not in output_extensions():
        raise UserError(f"-o {dst}: .{ext} is not a video container this FFmpeg writes; use .mp4, "
                        ".mkv, .mov or .webm")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} exists; use --overwrite to replace it")


def first_frame(path: Path, vin_index: int):
    """The first decoded frame (for its rotation and format), from a separate read."""
    with av.open(file_url(path)) as c:
        decoder = video_decoder(c.streams[vin_index])
        for packet in c.demux(c.streams[vin_index]):
            for frame in decoder.decode(packet):
                return frame
    raise UserError(f"{path}: the video stream has no decodable frame")


def frame_rate(vin) -> Fraction:
    """A video stream's frame rate: its average (frames over duration), else the guessed one,
    else 25. A rate of 1000 or more is a clock (Matroska's 1/1000 time base, read as a rate when
    a stream has no average), not a frame rate, and is passed over."""
    for rate in (vin.average_rate, vin.guessed_rate, vin.base_rate):
        if rate and 0 < rate < 1000:
            return Fraction(rate)
    return Fraction(25)


def header_video_end(container) -> float | None:
    """Where the main video stream ends, in seconds on its own clock, as the file's header says:
    its start plus its duration (MP4/MOV), or the DURATION tag that FFmpeg writes into
    Matroska/WebM (the end's time itself: a video from 3 s on, 0.4 s long, has 3.4 s); None where
    neither is there (MPEG-TS estimates it from what is there: no use)."""
    vin = main_video_stream(container)
    start = float(vin.start_time * vin.time_base) if vin.start_time is not None else 0.0
    if container.format.name.startswith("mpegts") or container.format.name == "mpeg":
        return None
    if vin.duration:
        return start + float(vin.duration * vin.time_base)
    tag = {k.lower(): v for k, v in vin.metadata.items()}.get("duration", "")
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tag.strip())
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None


def video_length(path: Path) -> float | None:
    """Seconds from a video file's first timestamp (where --start counts from) to where its main
    video stream ends, as its header says (`header_video_end`); None where that is not known."""
    container = open_input(path)
    try:
        end = header_video_end(container)
        return None if end is None else end - max(0.0, (container.start_time or 0) / 1e6)
    finally:
        container.close()


def frame_count(container) -> int | None:
    """The frames of the main video stream, from the header or the duration (None: unknown)."""
    vin = main_video_stream(container)
    return vin.frames or (int(float(container.duration / av.time_base) * float(frame_rate(vin)))
                          if container.duration else None)


def check_pix_fmt(pix_fmt: str) -> None:
    """A UserError unless `pix_fmt` names a pixel format FFmpeg knows."""
    try:
        av.VideoFormat(pix_fmt)
    except ValueError:
        raise UserError(f"--pix-fmt {pix_fmt}: not a pixel format; e.g. yuv420p, yuv420p10le, yuv444p "
                        "(`ffmpeg -pix_fmts` lists them)") from None


def check_encoder(codec: str, pix_fmt: str | None, default_fmt: str, *, quiet: bool = False):
    """The pixel format to encode with `codec`: `pix_fmt` if it takes it, else `default_fmt` (the
    input's) or the closest one it takes; a UserError for an unknown or non-video encoder. With
    `quiet`, (format, [note]) instead of printing the note."""
    try:
        enc = av.codec.Codec(codec, "w")
    except (av.FFmpegError, ValueError):
        raise UserError(f"unknown video encoder {codec!r}; try libx264, libx265 or libsvtav1") from None
    if enc.type != "video":
        raise UserError(f"{codec} is not a video encoder")
    formats = [f.name for f in (enc.video_formats or [])]
    pick, notes = default_fmt, []
    if pix_fmt:  # a known format: `choose_encoding`, which calls this, checked it first
        if formats and pix_fmt not in formats:
            raise UserError(f"{codec} cannot encode {pix_fmt}; it takes {', '.join(formats)}")
        pick = pix_fmt
    elif formats and default_fmt not in _formats_kept(codec, formats):
        kept = _formats_kept(codec, formats) or formats
        deep, alpha, rgb = _bits(default_fmt) > 8, has_alpha(default_fmt), av.VideoFormat(default_fmt).is_rgb
        colour = not _is_gray(default_fmt)
        # first of the best: colour kept (never gray or a palette for a colour input), same depth,
        # alpha, then an RGB input stays RGB (FFV1 takes 8-bit RGB as bgr0)
        pick = min(kept, key=lambda f: (colour and (_is_gray(f) or av.VideoFormat(f).has_palette),
                                        (_bits(f) > 8) != deep, has_alpha(f) != alpha,
                                        rgb and not av.VideoFormat(f).is_rgb))
        if _without_alpha(default_fmt) != pick:
            notes.append(f"{codec} cannot encode the input's {default_fmt}; using {pick}")
    if quiet:
        return pick, notes
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return pick


# ----------------------------------------------------------------------------------------------
# Which encoder: by container and bit depth
# ----------------------------------------------------------------------------------------------

# muxer name -> the family whose players' codecs apply (mp4, mov, m4v and 3gp play alike)
FAMILIES = {"mp4": "mp4", "mov": "mp4", "ipod": "mp4", "3gp": "mp4", "3g2": "mp4", "webm": "webm",
            "mpeg": "mpeg", "vob": "mpeg", "dvd": "mpeg", "svcd": "mpeg", "vcd": "mpeg",  # .mpg: DVD's
            "asf": "asf",  # .wmv/.asf: Windows Media (H.264 in ASF read back a frame late)
            "mpegts": "ts"}  # .ts/.m2ts: PCM other than Blu-ray's was read back as a data stream
# video encoders to try by default, in order; 10-bit ones are those players decode in 10 bits
# (HEVC Main 10, AV1, VP9 profile 2), never 10-bit H.264 (High 10: few players decode it)
VIDEO_ENCODERS = {"webm": ("libvpx-vp9", "libsvtav1", "libvpx"), "mpeg": ("mpeg2video",),
                  "asf": ("wmv2", "msmpeg4", "mpeg4"),
                  None: ("libx264", "libx265", "libsvtav1", "libvpx-vp9", "mpeg4",
                         "mpeg2video", "libtheora", "libvpx", "wrapped_avframe")}  # MXF, Ogg, Y4M
DEEP_ENCODERS = {"webm": ("libvpx-vp9", "libsvtav1"), "mpeg": (), "asf": (), None: ("libx265", "libsvtav1", "libvpx-vp9")}
# audio codecs the players of a family decode (copied as they are); others are re-encoded
PLAYABLE_AUDIO = {"mp4": {"aac", "mp3", "ac3", "eac3", "alac"}, "webm": {"opus", "vorbis"},
                  "asf": {"wmav1", "wmav2", "wmapro", "mp3"},
                  "ts": {"aac", "aac_latm", "mp3", "mp2", "ac3", "eac3", "dts", "truehd", "opus", "pcm_bluray", "s302m"}}
AUDIO_ENCODERS = {"mp4": "aac", "webm": "libopus", "mpeg": "mp2", "asf": "mp2", None: "aac"}  # wmav2 wants a bit rate
# where the family's encoder does not go in (MPEG-PS, Ogg, MXF ...): the first of these that does
OTHER_AUDIO_ENCODERS = ("mp2", "ac3", "libopus", "libvorbis", "flac", "pcm_s16le")
# the text subtitle format each family holds (other text subtitles are converted to it)
TEXT_SUBTITLES = {"mp4": "mov_text", "webm": "webvtt", None: "subrip"}


def muxer_name(dst: Path) -> str:
    """The FFmpeg muxer `dst`'s extension names (mp4, mov, webm, matroska ...); no file made."""
    try:
        probe = av.open(str(dst), "w")  # the file itself is only opened by start_encoding
    except (av.FFmpegError, ValueError) as exc:
        raise UserError(f"cannot write {dst.suffix} videos: {exc}") from None
    name = probe.format.name
    probe.close()
    return name


@functools.lru_cache(maxsize=None)
def container_takes(muxer: str, codec: str) -> bool:
    """Whether the `muxer` container can hold what `codec` encodes: FFmpeg's table, and for an
    audio or video encoder a header written with a stream of it (Ogg, MPEG-PS, MXF and Y4M
    accept any codec in the table and refuse most at the header)."""
    probe = av.open(io.BytesIO(), "w", format=muxer)
    try:
        kind = av.codec.Codec(codec, "w").type
        if kind != "video" and muxer in VIDEO_FIRST:
            _probe_stream(probe, VIDEO_FIRST[muxer])
        _probe_stream(probe, codec)
        if kind in ("video", "audio"):
            probe.start_encoding()
        return True
    except (av.FFmpegError, ValueError):
        return False
    finally:
        close_after_error(probe)


# muxers that take other streams only after one video stream (MXF: "there must be exactly one
# video stream and it must be the first one"): an audio encoder is probed with such a stream first
# (every one was refused, and an MP4's sound dropped from an .mxf output), and the audio rate they take
VIDEO_FIRST = {"mxf": "mpeg2video"}
AUDIO_RATE = {"mxf": 48000}  # "Only 48khz is implemented"


def _probe_stream(probe, codec: str):
    """A stream of `codec` in the `probe` container, set up as `container_takes` tries it."""
    stream = probe.add_stream(codec)
    kind = av.codec.Codec(codec, "w").type
    if kind == "video":
        stream.width = stream.height = 64
        stream.pix_fmt = (_encoder_formats(codec) or ["yuv420p"])[0]
        stream.codec_context.time_base = Fraction(1, 25)
        # quiet, as when encoding; a rate or range the encoder takes is checked later
        stream.codec_context.options = {**ENCODER_DEFAULTS.get(codec, {}), "strict": "-1"}
    elif kind == "audio":
        stream.layout, stream.rate = "stereo", AUDIO_RATE.get(probe.format.name, 48000)
    return stream


def _formats_kept(codec: str, formats: list[str]) -> list[str]:
    """Those of `formats` (the encoder's) whose every plane reaches the file: an alpha plane
    only where `codec` is one of `ALPHA_ENCODERS`."""
    return formats if codec in ALPHA_ENCODERS else [f for f in formats if not has_alpha(f)]


def _without_alpha(pix_fmt: str) -> str:
    """yuva420p -> yuv420p (what dropping the alpha plane leaves, needing no note)."""
    return re.sub(r"^yuva", "yuv", pix_fmt)


def _is_gray(pix_fmt: str) -> bool:
    """A format with no chroma (gray, gray10le, ya8, ya16le ...)."""
    return re.fullmatch(r"(gray|ya)\d*(f\d+)?(le|be)?", pix_fmt) is not None


def _bits(pix_fmt: str) -> int:
    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


def _encoder_formats(codec: str) -> list[str]:
    """The pixel formats the video encoder `codec` takes ([] for an unknown one, or one that
    does not say)."""
    try:
        return [f.name for f in (av.codec.Codec(codec, "w").video_formats or [])]
    except (av.FFmpegError, ValueError):
        return []


def _deep_formats(codec: str) -> list[str]:
    """The planar YUV formats of more than 8 bits that `codec` encodes ([] for an unknown one)."""
    formats = [av.VideoFormat(name) for name in _encoder_formats(codec)]
    return [f.name for f in formats if is_planar_yuv(f) and f.components[0].bits > 8]


def _default_codec(muxer: str, deep: bool, dst: Path) -> tuple[str, list[str]]:
    """The first encoder of the container's list that exists here and the container takes (one
    keeping more than 8 bits for a `deep` input, where there is one); notes on what gave way."""
    family = FAMILIES.get(muxer)
    key = family if family in VIDEO_ENCODERS else None

    def usable(codecs):  # lazily: each probe opens an encoder
        return (c for c in codecs if c in av.codecs_available and container_takes(muxer, c))
    if deep:
        keeps = next((c for c in usable(DEEP_ENCODERS[key]) if _deep_formats(c)), None)
        if keeps:
            return keeps, []
    first = next(usable(VIDEO_ENCODERS[key]), None)
    if first is None:
        raise UserError(f"-o {dst}: this FFmpeg has no video encoder that the {muxer} container "
                        "takes; use .mp4, .mkv, .mov or .webm")
    notes = [f"no encoder here writes more than 8 bits into {dst.suffix} in a codec players "
             f"decode: the 10-bit input is written as 8-bit {first}"] if deep else []
    return first, notes


# Encoders of the formats people deliver in: their 4:2:2 / 4:4:4 profiles are what browsers,
# QuickTime, phones and hardware decoders lack, so by default they get 4:2:0 (`_delivery_format`).
DELIVERY_ENCODERS = ("libx264", "h264", "libx265", "hevc", "libvpx-vp9", "libvpx", "libsvtav1")


def _delivery_format(codec: str, src_fmt: str) -> str | None:
    """For a delivery encoder, the 4:2:0 format of `src_fmt`'s depth (at most 10 bits) and range
    (yuv422p10le -> yuv420p10le, yuvj444p -> yuvj420p, yuv444p12le -> yuv420p10le) where that
    differs from `src_fmt` and `codec` takes it; gray (4:0:0, which few decoders play either) as
    4:2:0 of its depth; else None. Players decode 8 and 10 bits (HEVC Main 10, VP9 profile 2,
    AV1 Main), 12 hardly anywhere. RGB (gbrp: screen captures, `make-clip`'s lossless clips),
    which HEVC and VP9 would write as RGB (Rext, profile 1), also as 4:2:0."""
    m = re.fullmatch(r"yuv(j?)(a?)(4[0-9][0-9])p(\d*)(le|be)?", src_fmt)
    gray = re.fullmatch(r"gray(\d*)(le|be)?", src_fmt)
    rgb = av.VideoFormat(src_fmt).is_rgb and not av.VideoFormat(src_fmt).has_palette
    if codec not in DELIVERY_ENCODERS or not (gray or m or rgb):
        return None
    depth = "" if _bits(src_fmt) <= 8 else "10le"
    if gray:
        names = [f"yuv420p{depth}", "yuv420p"]
    else:  # with its alpha plane where the encoder keeps one (VP9), else without
        full, alpha = (m.group(1), m.group(2)) if m else ("", "a" if has_alpha(src_fmt) else "")
        alphas = [alpha, ""] if codec in ALPHA_ENCODERS else [""]
        names = [f"yuv{full}{a}420p{depth}" for a in dict.fromkeys(alphas)]
    if names[0] in (src_fmt, _without_alpha(src_fmt)):  # as it is, or its alpha dropped (noted)
        return None
    takes = _encoder_formats(codec)
    return next((n for n in names if n in takes), None)


def choose_encoding(dst: Path, src_fmt: str, codec: str | None = None,
                    pix_fmt: str | None = None) -> tuple[str, str, list[str]]:
    """The encoder and pixel format for writing a `src_fmt` video into `dst`, and notes for the
    user. `codec` None: by container (WebM: VP9; others: H.264) and depth (a 10-bit input:
    HEVC Main 10, or AV1 for WebM). A `codec` the container cannot hold is a UserError;
    libx264 on a 10-bit input writes 8-bit yuv420p, and a delivery encoder (H.264, HEVC, VP9,
    AV1) writes a gray, 4:2:2 or 4:4:4 input as 4:2:0 of its depth, unless `pix_fmt` asks otherwise."""
    muxer = muxer_name(dst)
    if pix_fmt:
        check_pix_fmt(pix_fmt)
    deep = _bits(pix_fmt or src_fmt) > 8
    notes: list[str] = []
    chosen = codec is None
    if chosen and deep and muxer == "webm" and pix_fmt is None and has_alpha(src_fmt):
        codec, notes = _default_codec(muxer, False, dst)  # VP9: WebM's one encoder with alpha here
        notes.append(f"the input's {src_fmt} is written as 8-bit {codec} to keep its alpha; --codec "
                     "libsvtav1 keeps 10 bits without it")
    elif chosen:
        codec, notes = _default_codec(muxer, deep, dst)
        if notes and pix_fmt is None and codec in ("libx264", "h264"):
            pix_fmt = "yuv420p"  # 8-bit, as the note says (.m4v, .3gp, .mxf wrote 10-bit H.264)
    else:
        check_encoder(codec, pix_fmt, src_fmt, quiet=True)  # unknown encoders first
        if not container_takes(muxer, codec):
            pick, _ = _default_codec(muxer, False, dst)
            raise UserError(f"-o {dst}: the {muxer} container cannot hold {codec} video; use "
                            f"--codec {pick} (or leave --codec out)")
        if deep and pix_fmt is None and codec in ("libx264", "h264"):
            pix_fmt = "yuv420p"
            notes.append(f"{codec} writes the 10-bit input as 8-bit yuv420p (10-bit H.264 plays in "
                         "few players; leave --codec out for 10-bit HEVC)")
    if pix_fmt is None and (sub := _delivery_format(codec, src_fmt)) is not None:
        pix_fmt = sub
        if src_fmt in _encoder_formats(codec):
            notes.append(f"the input's {src_fmt} is written as {sub}: {codec} in RGB, 4:0:0, 4:2:2, "
                         f"4:4:4 or over 10 bits plays in few players (browsers, QuickTime, phones); "
                         f"--pix-fmt {src_fmt} keeps it")
        else:  # as check_encoder says it
            notes.append(f"{codec} cannot encode the input's {src_fmt}; using {sub}")
    try:
        fmt, fmt_note = check_encoder(codec, pix_fmt, src_fmt, quiet=True)
    except UserError as exc:
        if not chosen:
            raise
        raise UserError(f"{exc} ({codec} is the default encoder for {dst.suffix or muxer} files: "
                        "name one that takes it with --codec)") from None
    return codec, fmt, notes + fmt_note


def open_output(path: Path, suffix: str):
    """An output container at `path`, of the kind `suffix` names (e.g. ".mp4")."""
    try:
        out = av.open(str(path), "w")
    except (av.FFmpegError, ValueError) as exc:
        raise UserError(f"cannot write {suffix} videos: {exc}") from None
    if out.format.name in NO_PTS_MUXERS:
        out.container_options["avoid_negative_ts"] = "disabled"  # see NO_PTS_MUXERS
    return out


def close_after_error(out) -> None:
    """Close an output whose writing failed: the first error is the one to report, and the
    file is removed anyway."""
    try:
        out.close()
    except Exception:
        pass


# a constant quantizer of 3 (lambda = 3 x FF_QP2LAMBDA), as ffmpeg -q:v 3, for encoders without --crf
WMV_QUALITY = {"flags": "+qscale", "global_quality": str(3 * 118)}
# encoder options that keep a default run quiet and quick; --crf/--preset override their keys
ENCODER_DEFAULTS = {"libx265": {"x265-params": "log-level=error"},
                    "libvpx-vp9": {"row-mt": "1", "cpu-used": "4", "b": "0", "crf": "32"},
                    "libvpx": {"cpu-used": "4", "b": "1M"},  # VP8 has no pure constant quality
                    "libsvtav1": {"preset": "10"},
                    # MPEG-2 at a rate outside its table, MJPEG in limited range: "unofficial"
                    "mpeg2video": {"strict": "-1"}, "mjpeg": {"strict": "-1"},
                    # .wmv's: FFmpeg's default is 200 kb/s at any size (an upscaled 352x288 clip:
                    # 26.7 dB, H.264 at CRF 23 30.3); a constant quantizer (ffmpeg -q:v 3): 31.0
                    "wmv2": WMV_QUALITY, "msmpeg4": WMV_QUALITY}
# containers that store frames at a constant rate (AVI's stream rate is 1 / the time base), and
# encoders that code the rate: their time base is 1/fps, not the input's (1/12800 from MP4 made
# an AVI of 600 frames/s)
CFR_MUXERS = {"avi", "mpeg", "vob", "dvd", "svcd", "vcd", "yuv4mpegpipe", "mxf", "mxf_d10", "ogg", "ogv"}
CFR_ENCODERS = {"mpeg1video", "mpeg2video", "libtheora"}
# containers that store no times, only the order of the frames and of the sound (AVI): a reordered
# frame (an H.264 B-frame) was read back at the time of its place in the file (times out of order),
# so their encoders make none; and sound that starts before 0 (AAC's priming) had the muxer move
# every frame but the first by that time, rounded to a whole frame (a hole after the first frame),
# where the sound has no time to move
NO_PTS_MUXERS = {"avi"}
# containers that store frames in decoding order only, their times not told apart (MXF writes each
# H.264 frame's pts as its dts): B-frames came back out of order, so their encoders make none
NO_REORDER_MUXERS = NO_PTS_MUXERS | {"mxf", "mxf_d10", "mxf_opatom"}
# containers that hold a frame in every slot of their constant rate (a gap in the times is lost,
# and the later frames come early): a skipped slot repeats the frame before, as FFmpeg's -vsync cfr
SLOT_MUXERS = {"avi", "mxf", "mxf_d10", "mxf_opatom", "yuv4mpegpipe"}
PRESET_OPTION = {"libvpx-vp9": "cpu-used", "libvpx": "cpu-used"}  # libvpx: speed 0-8 as --preset
HEVC_ENCODERS = ("libx265", "hevc")


def encoder_options(codec: str, crf: int | None, preset: str | None) -> dict:
    """The options `codec` is opened with: `ENCODER_DEFAULTS`, then --crf and --preset."""
    options = dict(ENCODER_DEFAULTS.get(codec, {}))
    if crf is not None:
        options["crf"] = str(crf)
    if preset is not None:
        options[PRESET_OPTION.get(codec, "preset")] = str(preset)
    return options


# Under --max-memory, what x264/x265 buffer is bounded: they hold every frame of their lookahead
# (x264's medium: 40; the run waited that many 2560x1440 frames before its first packet, ~0.6 GB)
# and one more per frame thread (1.5 x the cores by default); their quality settings stay as asked
BOUNDED_LOOKAHEAD = 10
BOUNDED_THREADS = 4
# bytes an encoder holds per output pixel: (per buffered frame, fixed: reference and half-pel
# planes), x264's measured through PyAV at 1280x720 (rc-lookahead 40: 170 MiB, 10: 76 MiB); x265's
# (its CTU data beside each frame) from 640x360 and 1280x720 bounded (~180 bytes a pixel grown)
ENCODER_BYTES_PER_PIXEL = {"libx264": (3.6, 47.0), "libx265": (8.0, 70.0)}


def bounded_encoder_options(codec: str, options: dict) -> dict:
    """`options` with `codec`'s lookahead and frame threads bounded (`BOUNDED_LOOKAHEAD`,
    `BOUNDED_THREADS`), for a run under --max-memory; unchanged for other encoders."""
    threads = min(os.cpu_count() or 1, BOUNDED_THREADS)
    if codec == "libx264":
        return {**options, "rc-lookahead": str(BOUNDED_LOOKAHEAD), "threads": str(threads)}
    if codec == "libx265":
        params = [p for p in options.get("x265-params", "").split(":") if p]
        params += [f"rc-lookahead={BOUNDED_LOOKAHEAD}", f"frame-threads={threads}", f"pools={threads}"]
        return {**options, "x265-params": ":".join(params)}
    return options


def encoder_held_bytes(codec: str, width: int, height: int) -> int:
    """The bytes `codec` holds encoding width x height frames with `bounded_encoder_options`
    (0 where not known: other encoders buffer a few frames at most, or what they hold is theirs)."""
    if codec not in ENCODER_BYTES_PER_PIXEL:
        return 0
    per_frame, fixed = ENCODER_BYTES_PER_PIXEL[codec]
    frames = BOUNDED_LOOKAHEAD + 2 * min(os.cpu_count() or 1, BOUNDED_THREADS)  # a thread's frame, its lookahead's
    return int(width * height * (per_frame * frames + fixed))


def hdr10_metadata(frame, svt: bool = False) -> tuple[str, str] | None:
    """(mastering display, content light level) of `frame`'s HDR10 static metadata in x265's
    syntax, "G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)" (chromaticity in 1/50000, luminance in
    1/10000 cd/m2) and "MaxCLL,MaxFALL" ("" where absent), or with `svt` in SVT-AV1's (the same
    order, chromaticity as fractions, luminance in cd/m2); None where it carries none."""
    display = light = ""
    for sd in getattr(frame, "side_data", None) or []:
        kind = sd.type.name
        if kind == "MASTERING_DISPLAY_METADATA" and len(bytes(sd)) >= 88:
            v = struct.unpack("<22i", bytes(sd)[:88])  # AVMasteringDisplayMetadata: rationals R, G, B, WP, min, max
            q = [v[2 * i] / v[2 * i + 1] if v[2 * i + 1] else 0.0 for i in range(10)]
            if v[20] and v[21]:  # has_primaries, has_luminance
                c = [f"{x:.4f}" for x in q[:8]] if svt else [round(x * 50000) for x in q[:8]]
                lum = (f"{q[9]:g}", f"{q[8]:g}") if svt else (round(q[9] * 10000), round(q[8] * 10000))
                display = (f"G({c[2]},{c[3]})B({c[4]},{c[5]})R({c[0]},{c[1]})WP({c[6]},{c[7]})"
                           f"L({lum[0]},{lum[1]})")
        elif kind == "CONTENT_LIGHT_LEVEL" and len(bytes(sd)) >= 8:
            light = "{},{}".format(*struct.unpack("<2I", bytes(sd)[:8]))
    return (display, light) if display or light else None


def with_hdr10(codec: str, options: dict, frame) -> dict:
    """`options` with the HDR10 metadata of `frame` passed to x265 or SVT-AV1 (it was lost: the
    output said PQ / BT.2020 but not the mastering display's light, which HDR TVs tone-map by)."""
    svt = codec == "libsvtav1"
    meta = hdr10_metadata(frame, svt=svt) if svt or codec in HEVC_ENCODERS else None
    if meta is None:
        return options
    display, light = meta
    if svt:
        key, names, extra = "svtav1-params", ("mastering-display", "content-light"), []
    else:
        key, names, extra = "x265-params", ("master-display", "max-cll"), ["hdr10=1"]
    extra += [f"{names[0]}={display}"] if display else []
    extra += [f"{names[1]}={light}"] if light else []
    params = [p for p in options.get(key, "").split(":") if p]
    return {**options, key: ":".join(params + extra)}


UNBOUND_HRD_KBPS = 800000  # level 6.2's rate: an HRD that carries the timing and caps nothing


def with_picture_timing(options: dict, width: int, height: int, pix_fmt: str, time_base) -> dict:
    """x264 `options` that write picture timing (HRD) in each frame: FFmpeg reads H.264 in AVI,
    which stores no times, by them; without them it read every frame one frame late (0.04 s
    behind the sound at 25 fps). The HRD's rate and buffer are set where they never bind
    (`UNBOUND_HRD_KBPS`: the level's own cap cost grainy 1080p at crf 16 2.2 dB), and the level
    label stays the one x264 picks for such frames."""
    level = _x264_level(options, width, height, pix_fmt, time_base)
    if level is None:
        return options
    hrd = ["nal-hrd=vbr", f"vbv-maxrate={UNBOUND_HRD_KBPS}", f"vbv-bufsize={UNBOUND_HRD_KBPS}"]
    params = [p for p in options.get("x264-params", "").split(":") if p]
    return {**options, "level": f"{level / 10:g}", "x264-params": ":".join(params + hrd)}


def _x264_level(options: dict, width: int, height: int, pix_fmt: str, time_base) -> int | None:
    """The level_idc of the SPS that x264 writes with `options` for such frames (one blank frame
    encoded), or None."""
    probe = av.CodecContext.create("libx264", "w")
    probe.width, probe.height, probe.pix_fmt = width, height, pix_fmt
    probe.time_base, probe.framerate = time_base, 1 / time_base
    probe.options = dict(options)
    try:
        probe.open()
        data = b"".join(bytes(p) for p in [*probe.encode(av.VideoFrame(width, height, pix_fmt)),
                                              *probe.encode(None)])
    except (av.FFmpegError, ValueError):
        return None
    for start in (m.end() for m in re.finditer(b"\x00\x00\x01", data)):
        if start + 3 < len(data) and data[start] & 0x1F == 7:  # the SPS NAL unit: profile, flags, level
            return data[start + 3]
    return None


EVEN_SIDE_ENCODERS = ("libx264", "h264", "libx265", "hevc")  # refuse an odd side of halved chroma


def _chroma_halved(pix_fmt: str) -> tuple[bool, bool]:
    """Whether `pix_fmt`'s chroma has half the width, and half the height, of its luma."""
    planes = av.VideoFormat(pix_fmt, 2, 2).components
    return (planes[1].width == 1, planes[1].height == 1) if len(planes) >= 3 else (False, False)


def output_time_base(muxer: str, codec: str, vin, rate: Fraction) -> Fraction:
    """The encoder's time base: 1/fps where the container or codec counts frames; for a
    millisecond clock (Matroska, WebM) at a fractional rate such as 24000/1001, 1/24000, which
    holds both the frame grid and every millisecond (the output's clock had 41/42 ms steps and
    read 23.988 fps); else the input's."""
    if muxer in CFR_MUXERS or codec in CFR_ENCODERS:
        return 1 / rate
    if vin.time_base == Fraction(1, 1000) and rate.denominator != 1:
        return Fraction(1, math.lcm(1000, rate.numerator))
    return vin.time_base


# encoders that write the pixel aspect into the bitstream, where a Matroska reader finds it
ASPECT_IN_BITSTREAM = ("libx264", "h264", "libx265", "hevc", "mpeg4", "mpeg2video")


def _note_lost_aspect(muxer: str, codec: str, sar: Fraction) -> None:
    """Say so where the output's pixels lose their non-square shape: FFmpeg's Matroska writer
    takes the aspect only from the stream, which PyAV cannot set (MP4 takes the encoder's)."""
    if sar != 1 and muxer in ("matroska", "webm") and codec not in ASPECT_IN_BITSTREAM:
        print(f"note: the input's pixels are not square (aspect {sar.numerator}:{sar.denominator}); {codec} "
              f"in {muxer} cannot keep that here, so players show them square; write .mp4, or use "
              "--codec libx264 or libx265 in .mkv, to keep it", file=sys.stderr)


# muxers that store a display matrix (MP4/MOV's tkhd, Matroska's projection): AVI, MPEG-TS/PS,
# NUT, FLV, MXF drop it, and a phone's upright video then plays on its side
ROTATION_MUXERS = {"mp4", "mov", "ipod", "3gp", "3g2", "ismv", "f4v", "psp", "matroska", "webm"}


def _note_lost_rotation(muxer: str, rotation: float) -> None:
    """Say so where the output cannot keep the input's rotation (the frames are stored as
    recorded, and players turn them by that tag)."""
    if muxer not in ROTATION_MUXERS:
        print(f"note: the input is shown rotated by {rotation:g} degrees (a tag on its frames), which "
              f"{muxer} cannot store: players will show the output turned; write .mp4, .mov, .mkv or "
              ".webm to keep it", file=sys.stderr)


def check_frame_size(codec: str, pix_fmt: str, ow: int, oh: int) -> None:
    """A UserError where `codec` cannot encode ow x oh frames in `pix_fmt`."""
    half_w, half_h = _chroma_halved(pix_fmt)
    if codec in EVEN_SIDE_ENCODERS and ((half_w and ow % 2) or (half_h and oh % 2)):
        raise UserError(f"{codec} cannot encode {ow}x{oh} frames in {pix_fmt} (its chroma needs even sides); "
                        "write .webm (VP9 takes any size) or pass --pix-fmt yuv444p")
    if codec in HEVC_ENCODERS and min(ow, oh) < 64:  # x265 4.2 corrupts memory below a CTU
        raise UserError(f"libx265 cannot encode frames under 64 pixels a side (output {ow}x{oh}); "
                        "use --codec libx264")


def source_size(path: Path) -> tuple[int, int]:
    """(width, height) of a video file's main video stream, as its header says."""
    container = open_input(path)
    try:
        ctx = main_video_stream(container).codec_context
        return ctx.width, ctx.height
    finally:
        container.close()


def add_video_stream(out, vin, codec: str, size: tuple[int, int], pix_fmt: str, first,
                     crf: int | None, preset: str | None, bounded: bool = False):
    """The encoded video stream of `out`: the input stream's timing, colour tags, aspect,
    metadata and rotation (of its `first` frame), `size` (h, w) and `pix_fmt`. `bounded`: the
    encoder's buffering bounded (`bounded_encoder_options`: --max-memory)."""
    oh, ow = size
    check_frame_size(codec, pix_fmt, ow, oh)
    rate = frame_rate(vin)
    vout = out.add_stream(codec, rate=rate)
    vout.width, vout.height, vout.pix_fmt = ow, oh, pix_fmt
    vout.time_base = vout.codec_context.time_base = output_time_base(out.format.name, codec, vin, rate)
    copy_colour_tags(vin.codec_context, vout.codec_context)
    if is_yuv(pix_fmt):  # tags the copy left unspecified (an RGB source's are BT.709 by now)
        in_size = (vin.codec_context.width, vin.codec_context.height)
        for attr, value in implied_tags(vout.codec_context, in_size, (ow, oh)).items():
            setattr(vout.codec_context, attr, value)
    if vin.sample_aspect_ratio:
        vout.codec_context.sample_aspect_ratio = vin.sample_aspect_ratio
        _note_lost_aspect(out.format.name, codec, vin.sample_aspect_ratio)
    options = encoder_options(codec, crf, preset)
    if bounded:
        options = bounded_encoder_options(codec, options)
    if out.format.name in NO_REORDER_MUXERS:
        options["bf"] = "0"  # see NO_REORDER_MUXERS
    if out.format.name in NO_PTS_MUXERS and codec == "libx264":
        options = with_picture_timing(options, ow, oh, pix_fmt, vout.codec_context.time_base)
    vout.codec_context.options = with_frame_packing(codec, with_hdr10(codec, options, first), first)
    if codec in HEVC_ENCODERS and FAMILIES.get(out.format.name) == "mp4":
        vout.codec_context.codec_tag = "hvc1"  # Apple's players take HEVC in MP4 only as hvc1
    for key in ("language", "title", "handler_name", "timecode"):  # MOV/MP4 make a tmcd track
        if key in vin.metadata:                                       # of the timecode tag
            vout.metadata[key] = vin.metadata[key]
    if getattr(first, "rotation", 0):
        vout.set_display_rotation(first.rotation)
        _note_lost_rotation(out.format.name, first.rotation)
    try:
        vout.disposition = vin.disposition & ~av.stream.Disposition.attached_pic  # default, forced ...
    except (AttributeError, ValueError, TypeError):
        pass
    return vout


def _first_packet(path: str, index: int):
    """The first non-empty packet of stream `index` of the file at `path` (None: it has none)."""
    with av.open(path) as c:
        for packet in c.demux(c.streams[index]):
            if packet.size:
                return packet
    return None


def _copy_works(muxer: str, stream, packet=None) -> bool:
    """Whether a `muxer` file with `stream` copied into it (and `packet` muxed into that) writes
    its header and trailer: FFmpeg's table accepts some tracks that its muxers then refuse (a
    MOV timecode track copied as data fails the trailer with EINVAL)."""
    probe = av.open(io.BytesIO(), "w", format=muxer)
    try:
        if muxer in VIDEO_FIRST and stream.type != "video":
            _probe_stream(probe, VIDEO_FIRST[muxer])
        copied = probe.add_stream_from_template(stream)
        probe.start_encoding()
        if packet is not None:
            packet.stream = copied
            probe.mux(packet)
        probe.close()
        return True
    except (av.FFmpegError, ValueError):
        close_after_error(probe)
        return False


def _copyable(container, out, s) -> bool:
    """Whether the stream `s` can be copied as it is into `out`: audio its players decode, any
    subtitle it holds, a data track that it writes with its first packet (a timecode track never
    is: a copied one fails MOV's trailer; the timecode tag carries it instead)."""
    muxer, family = out.format.name, FAMILIES.get(out.format.name)
    name = s.codec_context.codec.canonical_name if s.codec_context else None  # mp3, not its decoder mp3float
    mov_pcm = muxer == "mov" and (name or "").startswith("pcm_")  # QuickTime's own: kept lossless
    if s.type == "audio" and family in PLAYABLE_AUDIO and name not in PLAYABLE_AUDIO[family] and not mov_pcm:
        return False
    if s.type == "data":
        return _copy_works(muxer, s, _first_packet(container.name, s.index))
    return _copy_works(muxer, s)


def add_audio_encoder(out, s):
    """An output stream re-encoding the audio stream `s` with the family's encoder (AAC for MP4,
    Opus for WebM; else the first of `OTHER_AUDIO_ENCODERS` that the container takes) at its sample
    rate (or 48 kHz, where the encoder takes no other) and layout; None where no encoder fits."""
    first = AUDIO_ENCODERS.get(FAMILIES.get(out.format.name), AUDIO_ENCODERS[None])
    codec = next((c for c in (first, *OTHER_AUDIO_ENCODERS)
                  if c in av.codecs_available and container_takes(out.format.name, c)), None)
    if codec is None:
        return None
    rates = av.codec.Codec(codec, "w").audio_rates
    rate = s.codec_context.sample_rate if not rates or s.codec_context.sample_rate in rates else 48000
    rate = AUDIO_RATE.get(out.format.name, rate)
    aout = out.add_stream(codec, rate=rate)
    aout.layout = encoder_layout(codec, rate, s.codec_context.layout)
    for key in ("language", "title"):
        if key in s.metadata:
            aout.metadata[key] = s.metadata[key]
    return aout


# FFmpeg's usual layouts by channel count: a source's unnamed "N channels" (PCM in AVI or
# Matroska) is taken as the first, and an encoder that refuses a layout gets the next that it opens
# with (Opus takes 5.1 but not AC-3's 5.1(side))
LAYOUTS_BY_CHANNELS = {1: ["mono"], 2: ["stereo"], 3: ["2.1", "3.0"], 4: ["quad", "4.0"],
                       5: ["5.0", "5.0(side)"], 6: ["5.1", "5.1(side)"], 7: ["6.1", "6.1(back)"],
                       8: ["7.1", "7.1(wide)"]}


def encoder_layout(codec: str, rate: int, layout) -> str:
    """The channel layout to encode `layout`'s audio in with `codec`: its own where the encoder
    opens with it, else the first of the usual layouts of as many channels that does, else
    stereo (the encoder's resampler remixes the frames into it)."""
    n = layout.nb_channels
    tries = [layout.name] if layout.name != f"{n} channels" else []
    for name in [*tries, *LAYOUTS_BY_CHANNELS.get(n, []), "stereo"]:
        probe = av.CodecContext.create(codec, "w")
        probe.sample_rate, probe.layout = rate, name
        probe.format = av.codec.Codec(codec, "w").audio_formats[0]
        try:
            probe.open()
            return name
        except (av.FFmpegError, ValueError):
            continue
    return "stereo"


def add_subtitle_encoder(out, s):
    """An output stream converting the text subtitle stream `s` to the family's text format
    (MP4: mov_text, WebM: WebVTT, others: SubRip), or None where `s` is a picture subtitle or
    the container holds no text subtitles."""
    target = TEXT_SUBTITLES.get(FAMILIES.get(out.format.name), TEXT_SUBTITLES[None])
    props = av.codec.Codec(s.codec_context.name, "r").properties
    if not props & av.codec.codec.Properties.TEXT_SUB.value or not container_takes(out.format.name, target):
        return None
    s.codec_context.open()  # makes its ASS header, which the encoder starts from
    sout = out.add_stream(target)
    sout.codec_context.subtitle_header = s.codec_context.subtitle_header
    if "language" in s.metadata:
        sout.metadata["language"] = s.metadata["language"]
    return sout


def _converted_stream(out, s):
    """A re-encoded stream for `s` (audio, text subtitles) that `out` cannot take as it is."""
    if s.codec_context is None:
        return None
    if s.type == "audio":
        return add_audio_encoder(out, s)
    return add_subtitle_encoder(out, s) if s.type == "subtitle" else None


def add_copied_streams(container, out, skip: int) -> tuple[dict, dict]:
    """({input stream index: output stream} copied packet for packet, {index: output stream}
    re-encoded) for the audio, subtitle and data streams (but `skip`): audio the container's
    players decode is copied, other audio re-encoded (`add_audio_encoder`), text subtitles the
    container cannot hold converted (`add_subtitle_encoder`); other streams that it cannot hold
    are dropped with a note."""
    copies, encodes = {}, {}
    suffix = Path(out.name).suffix
    for s in container.streams:
        if s.index == skip:
            continue
        name = s.codec_context.codec.canonical_name if s.codec_context else "?"
        if s.type == "attachment" and out.format.name == "matroska" and s.metadata.get("filename"):
            # fonts for ASS subtitles and the like: only Matroska holds attachments
            out.add_attachment(name=s.metadata["filename"], data=s.data,
                               mimetype=s.mimetype or s.metadata.get("mimetype") or "application/octet-stream")
            continue
        if is_cover_art(s) and FAMILIES.get(out.format.name) != "mp4":
            _cover_as_attachment(container, out, s)
            continue
        if s.type not in COPY_TYPES and not is_cover_art(s):
            print(f"note: stream #{s.index} ({s.type}) is not copied", file=sys.stderr)
            continue
        if s.type == "data" and "timecode" in s.metadata:  # see `_copyable`
            if FAMILIES.get(out.format.name) != "mp4":  # there the muxer writes a tmcd track anew
                out.metadata["timecode"] = s.metadata["timecode"]
            code, muxer = s.metadata["timecode"], out.format.name
            print(f"note: timecode track #{s.index} kept as the timecode {code}" if muxer in TIMECODE_MUXERS
                  else f"note: timecode track #{s.index} ({code}) cannot go into {suffix}: dropped",
                  file=sys.stderr)
        elif _copyable(container, out, s):
            copies[s.index] = _keep_tags(s, out.add_stream_from_template(s))
        elif (converted := _converted_stream(out, s)) is not None:
            encodes[s.index] = _keep_tags(s, converted)
            print(f"note: {s.type} stream #{s.index} ({name}) re-encoded as "
                  f"{converted.codec_context.name} for {suffix}", file=sys.stderr)
        else:
            print(f"note: stream #{s.index} ({s.type}, {name}) cannot go into {suffix}: dropped",
                  file=sys.stderr)
    return copies, encodes


# muxers that store a timecode tag (MP4/MOV as a tmcd track): MPEG-TS/PS, .m4v and .3gp dropped it
# while the note said it was kept
TIMECODE_MUXERS = {"mp4", "mov", "matroska", "webm", "avi", "mxf", "nut", "flv", "ogg", "ogv", "asf"}
COVER_TYPES = {"mjpeg": ("cover.jpg", "image/jpeg"), "png": ("cover.png", "image/png")}


def _cover_as_attachment(container, out, s) -> None:
    """A cover picture where the output keeps covers as attachments (Matroska, as FFmpeg writes
    them); elsewhere it is dropped with a note (MP4 copies it as its cover stream)."""
    kind = COVER_TYPES.get(s.codec_context.codec.canonical_name if s.codec_context else "")
    packet = _first_packet(container.name, s.index) if kind else None
    if out.format.name == "matroska" and packet is not None:
        out.add_attachment(name=kind[0], mimetype=kind[1], data=bytes(packet))
    else:
        print(f"note: the cover picture (stream #{s.index}) cannot go into {Path(out.name).suffix}: dropped",
              file=sys.stderr)


STREAM_TAGS = ("language", "title", "handler_name")  # what says which track is which


def _keep_tags(src, dst):
    """`dst` with `src`'s language and title (the English and the French audio stay so named)
    and its disposition (default, forced, hearing impaired ...); returns `dst`."""
    for key in STREAM_TAGS:
        if key in src.metadata:
            dst.metadata[key] = src.metadata[key]
    try:
        dst.disposition = src.disposition
    except (AttributeError, ValueError, TypeError):
        pass
    return dst


OWN_TAGS = {"encoder", "major_brand", "minor_version", "compatible_brands"}  # the muxer's own


# a phone's QuickTime keys, named in reverse DNS (com.apple.quicktime.make, .model, .location.ISO6709,
# .creationdate; com.android.version, com.android.capture.fps): MP4/MOV muxers write such keys only
# as QuickTime metadata tags, and dropped them from the output without a word otherwise
QUICKTIME_KEY = re.compile(r"[a-z0-9-]+\.[a-z0-9-]+\.", re.IGNORECASE)


def start_output(container, out) -> None:
    """Copy the input's container metadata (but the muxer's own tags) and write the header."""
    try:
        tags = {k: v for k, v in container.metadata.items() if k.lower() not in OWN_TAGS}
        out.metadata.update(tags)
        if FAMILIES.get(out.format.name) == "mp4" and any(QUICKTIME_KEY.match(k) for k in tags):
            out.container_options["movflags"] = "use_metadata_tags"
        out.start_encoding()
    except (av.FFmpegError, ValueError) as exc:  # strerror: not the temporary file's name
        raise UserError(f"cannot write this video as {Path(out.name).suffix}: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None


def copy_chapters(container, out, t0: float = 0.0, t1: float | None = None) -> None:
    """The input's chapters that overlap [t0, t1) into `out` (before its header), cut to that
    window and moved back by t0."""
    kept = []
    for ch in container.chapters():
        tb = ch["time_base"]
        start, end = float(ch["start"] * tb), float(ch["end"] * tb)
        if end <= t0 or (t1 is not None and start >= t1):
            continue
        start, end = max(start, t0) - t0, (min(end, t1) if t1 is not None else end) - t0
        kept.append({**ch, "id": len(kept) + 1, "start": int(round(start / tb)), "end": int(round(end / tb))})
    if kept:
        out.set_chapters(kept)


def finish_output(out, dst: Path) -> None:
    """Flush the encoders and write the trailer; a failure is a UserError naming `dst` (not the
    temporary file written)."""
    try:
        out.close()
    except (av.FFmpegError, ValueError) as exc:
        raise UserError(f"writing {dst} failed at its end: {getattr(exc, 'strerror', None) or exc}; "
                        "try .mkv, which holds the most kinds of streams") from None


def remux(out, packet, stream, shift: int, lock: threading.Lock) -> None:
    """Mux a demuxed `packet` as it is into `stream` of `out`, its timestamps moved back by
    `shift` (in its time base); `lock` guards the muxer, which the encoder thread shares."""
    if shift:
        packet.pts = packet.pts - shift if packet.pts is not None else None
        packet.dts = packet.dts - shift if packet.dts is not None else None
    packet.stream = stream
    with lock:
        out.mux(packet)
