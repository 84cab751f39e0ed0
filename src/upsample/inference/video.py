"""Upscale a video's frames; copy its other streams untouched where the output container takes
them, re-encode those it does not (`upsample video`; which is which is `media.video`'s).

Three threads run at once: one demuxes and decodes (and remuxes the audio, subtitle and data
packets as they are, only their stream changed, or re-encodes them), the calling thread upscales
batches of frames, one encodes and muxes. Bounded queues between them keep memory flat. Each frame keeps its pts,
time base and duration, so the frame rate (also a variable one) and the duration are the input's.

Y-channel models run on the Y plane of a planar YUV frame, with the chroma planes resized by
libswscale (PyAV's reformat): no RGB round trip. RGB models get rgb24 (rgb48 for deeper video)
and their output is converted back to the output pixel format with the input's colour matrix and
range. Progress: a tqdm bar on a terminal, else a line every 5 s; a run over 3 minutes gets a
one-line estimate after its first frames.
The output is written under a temporary name and renamed when complete; on failure or Ctrl-C the
temporary file is removed. Reading and writing the files is `media.video`'s.
Frames with alpha: into an output that keeps it, the colour of fully transparent pixels is first
filled from the nearest visible one (no dark fringe); into an opaque one, composited over black.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import queue
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

from ..data.degrade import imresize, output_size
from ..errors import UserError
from ..media.imageio import Planes, atomic_output, fill_hidden_colour
from ..media.progress import progress_bar
from ..media.video import (CAPTION_SEI_HEADERS, EXACT_SWS, FAMILIES, NO_PTS_MUXERS, SLOT_MUXERS, VIDEO_FIRST,
                           add_copied_streams, add_video_stream, carry_frame_props, copy_chapters, copy_colour_tags,
                           choose_encoding, close_after_error, colour_tags, encoder_held_bytes,
                           finish_output, first_frame, frame_rgb,
                           frame_count, frame_rate, has_alpha, header_video_end, is_cover_art, is_planar_yuv, is_yuv,
                           keep_alpha_hint, lost_metadata_notes, main_video_stream, muxer_name, open_input,
                           open_output, plane_view, remux, start_output, stream_pix_fmt, video_decoder,
                           with_captions)
from .tiler import BATCHES, Tiler, fastest_batch
from .upscaler import ModelUpscaler, Upscaler

_END = object()  # the end of a queue's items


class YPlaneUpscaler(Upscaler):
    """The network of a Y-channel model applied to a Y plane: 1 channel in, 1 out. With
    `full_range` the plane is full-range luma (yuvj*), mapped to the studio range the models
    were trained on and back."""

    channel_agnostic = True

    def __init__(self, up: ModelUpscaler, full_range: bool = False):
        self.up, self.full_range = up, full_range
        self.name, self.scale, self.device = up.name, up.scale, up.device
        self.model, self.spec, self.backend = up.model, up.spec, up.backend

    @torch.no_grad()
    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        y = y.to(self.device, torch.float32)
        if self.full_range:
            y = (16.0 + 219.0 * y) / 255.0
        if self.spec.pre_upsample:
            y = imresize(y, self.scale)
        out = self.up.run_network(y)
        if self.full_range:
            out = (out * 255.0 - 16.0) / 219.0
        return out


# ----------------------------------------------------------------------------------------------
# The plan: how frames are upscaled
# ----------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """How frames are upscaled: the upscaler (an RGB model, or the network on Y), its tiler and
    tile side, the frame format worked in, the output pixel format and size (h, w)."""
    net: Upscaler
    tiler: Tiler
    tile: int
    work: av.VideoFormat
    out_fmt: str
    y_model: bool
    bits: int
    size: tuple[int, int]
    workers: int = 1  # frames upscaled side by side (threads on the network's streams)
    alpha_unused: bool = False  # the input's alpha is a padding byte (`_alpha_unused`): left alone


def frames_per_call(net: Upscaler, tiler: Tiler, h: int, w: int, chans: int, dtype, out_hw,
                    timed: bool | None = None) -> int:
    """Frames per model call for this device: 1 on the CPU (OpenVINO already spreads one frame
    over every thread; batches of 2-4 measured 4 % faster for ESPCN and 30 % slower for VapSR-S
    here), else the fastest per frame of `BATCHES` that fits untiled in memory, timed on frames of
    this size (a GPU is idle between small calls). `timed` overrides the device's choice."""
    if not (net.device.type != "cpu" if timed is None else timed):
        return 1
    item = np.dtype(dtype).itemsize * chans * out_hw[0] * out_hw[1]
    fits = [n for n in BATCHES if tiler.plan_tile(h, w, chans, dtype, batch=n, reserved=n * item) == 0]
    if len(fits) <= 1:
        return 1
    frames = torch.rand(fits[-1], chans, h, w, generator=torch.Generator().manual_seed(0))
    return fastest_batch(lambda n: net(frames[:n]), fits, device=net.device)


# the RGB formats frames are upscaled in: (more than 8 bits, with alpha) -> format
RGB_WORK = {(False, False): "rgb24", (True, False): "rgb48le", (False, True): "rgba", (True, True): "rgba64le"}


def _plan(up: Upscaler, cc, out_fmt: str, *, batch: int | None, tile: int | None,
          max_memory: int | None, tile_batch: int | None, codec: str | None = None) -> tuple[_Plan, int]:
    """The plan for frames of the codec context `cc` encoded as `out_fmt` by `codec`, and the
    frames per model call (`batch`, or picked by `frames_per_call` where None). Where the runtime
    can serve several threads at once (`ModelUpscaler.side_by_side`) and that many whole frames
    fit in memory, frames are upscaled side by side, one a call each. Under `max_memory` the
    tiles leave room for what the encoder and the queues to it hold (`held_outside_tiles`)."""
    oh, ow = output_size(cc.height, up.scale), output_size(cc.width, up.scale)
    y_model = isinstance(up, ModelUpscaler) and up.spec.input == "y"
    fmt = av.VideoFormat(out_fmt)
    deep = max(fmt.components[0].bits, cc.format.components[0].bits) > 8
    alpha = "a" if has_alpha(out_fmt) else ""
    if y_model:  # planar YUV to work in; the encoder converts it to out_fmt if that differs
        work = fmt if is_planar_yuv(fmt) else av.VideoFormat(f"yuv{alpha}420p10le" if deep else f"yuv{alpha}420p")
        # the range the frames are converted to (`colour_tags`: an RGB or gray source's is limited)
        full = work.name.startswith("yuvj") or colour_tags(cc, work.name)["color_range"] == 2
    else:
        work, full = av.VideoFormat(RGB_WORK[deep, bool(alpha)]), False

    def frame_net(u: Upscaler) -> Upscaler:
        return YPlaneUpscaler(u, full_range=full) if y_model else u

    bits = work.components[0].bits
    chans = 1 if y_model else 3
    dtype = np.uint16 if bits > 8 else np.uint8
    item = oh * ow * chans * np.dtype(dtype).itemsize
    net = frame_net(up)
    tiler = Tiler(net, tile=tile, max_memory=max_memory, progress=False, tile_batch=tile_batch)
    if batch is None:
        batch = frames_per_call(net, tiler, cc.height, cc.width, chans, dtype, (oh, ow))
    def held(frames: int, workers: int) -> int:
        return held_outside_tiles(codec, out_fmt, (oh, ow), frames, workers) if max_memory is not None else 0

    tile_side = tiler.plan_tile(cc.height, cc.width, chans, dtype, batch=batch,
                                reserved=batch * item + held(batch, 1))
    workers = 1
    if batch == 1 and tile_side == 0 and isinstance(up, ModelUpscaler) and up.parallel is not None:
        twin, n = up.side_by_side()
        if n > 1 and tiler.plan_tile(cc.height, cc.width, chans, dtype, batch=n,
                                     reserved=n * item + held(1, n)) == 0:
            net, workers = frame_net(twin), n
            tiler = Tiler(net, tile=tile, max_memory=max_memory, progress=False, tile_batch=tile_batch)
    return _Plan(net, tiler, tile_side, work, out_fmt, y_model, bits, (oh, ow), workers), batch


def encode_slots(workers: int) -> int:
    """Groups of upscaled frames the queue to the encoder holds (`_Stages.encode_q`)."""
    return max(2, workers)


def held_outside_tiles(codec: str | None, out_fmt: str, size: tuple[int, int], batch: int,
                       workers: int) -> int:
    """Bytes that --max-memory must leave beside the tiles: what the encoder holds, its buffering
    bounded (`media.video.encoder_held_bytes`: x264's default lookahead alone held 0.6 GB of
    2560x1440 frames, and a 1G run peaked at 2 GB), and the upscaled frames on their way to it
    (the queue's, the writer's, those being upscaled)."""
    oh, ow = size
    frame = oh * ow * av.VideoFormat(out_fmt).padded_bits_per_pixel // 8
    queued = (encode_slots(workers) + 1 + workers) * batch * frame
    garbage = 2 * FRAME_GARBAGE  # the decoded frames and the upscaled ones, until collected
    return (encoder_held_bytes(codec, ow, oh) if codec else 0) + queued + garbage


# PyAV's frames that were asked for their side data (`media.video.captions`, every frame) are a
# reference cycle with it (frame <-> SideDataContainer): freed only by a full garbage collection,
# which Python ran seldom here (few objects are made per frame), so the pictures of hundreds of
# frames stayed resident (a 1G run rose 1.13 -> 1.40 GB midway, 240 frames alive in a 120-frame
# run). The writer collects once this many bytes of frames went through it.
FRAME_GARBAGE = 64 << 20


def upscale_video(src: str | os.PathLike, dst: str | os.PathLike, up: Upscaler, *,
                  codec: str | None = None, crf: int | None = None, preset: str | None = None,
                  pix_fmt: str | None = None, start: float | None = None,
                  duration: float | None = None, batch: int | None = 1, tile: int | None = None,
                  max_memory: int | None = None, progress: bool = False,
                  tile_batch: int | None = None) -> dict:
    """Upscale `src` into `dst` (see the module docstring). Returns a summary. `codec` None:
    `media.video.choose_encoding` picks it by container and bit depth. `batch`: frames per
    model call; None: `frames_per_call` picks it for the device. `tile_batch`: tiles per model
    call when frames are tiled (None: `Tiler` picks it)."""
    src, dst = Path(src), Path(dst)
    container = open_input(src)
    try:
        vin = main_video_stream(container)
        src_fmt = stream_pix_fmt(vin)
        codec, out_fmt, notes = choose_encoding(dst, src_fmt, codec, pix_fmt)
        first = first_frame(src, vin.index)
        if _may_be_transparent(vin.codec_context.name, src_fmt, first) and not has_alpha(out_fmt):
            notes.append(f"the input's transparency (alpha) is not kept: {codec} {out_fmt} is opaque "
                         "(the picture is composited over black); "
                         f"{keep_alpha_hint(muxer_name(dst))}")
        notes += lost_metadata_notes(codec, first)
        if getattr(first, "interlaced_frame", False):
            notes.append("the input is interlaced: each frame's two fields are upscaled as one picture, "
                         "which enlarges their combing; deinterlace it first (e.g. ffmpeg -vf bwdif)")
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        plan, batch = _plan(up, vin.codec_context, out_fmt, batch=batch, tile=tile,
                            max_memory=max_memory, tile_batch=tile_batch, codec=codec)
        plan = dataclasses.replace(plan, alpha_unused=_alpha_unused(first, vin.codec_context.name))
        suffix = dst.suffix or ".mp4"
        with atomic_output(dst, suffix=".part" + suffix) as tmp:  # the container goes by suffix
            out = open_output(tmp, suffix)
            try:
                vout = add_video_stream(out, vin, codec, plan.size, plan.out_fmt, first, crf, preset,
                                        bounded=max_memory is not None)
                copies, encodes = add_copied_streams(container, out, skip=vin.index)
                window = ClipWindow(start, duration, origin=clock_origin(container, vin))
                copy_chapters(container, out, window.t0, window.t1)
                start_output(container, out)
                with _glue_threads(up):
                    summary = _pump(container, out, vout, (copies, encodes), plan, window, batch, progress)
            except BaseException:
                close_after_error(out)
                raise
            finish_output(out, dst)  # flushes the encoders: its errors count
        summary["batch"] = batch
        return summary
    finally:
        container.close()


def clock_origin(container, vin) -> float:
    """Where the output's clock starts, in seconds of the input's: its first timestamp. A negative
    one is AAC priming before an MP4's picture (kept before 0 there: the picture starts at 0),
    unless the picture itself starts before 0: an MPEG-TS recorded across its 33-bit clock's wrap
    (FFmpeg counts the times before it as negative), whose frames before 0 an MP4 output lost."""
    start = (container.start_time or 0) / 1e6  # AV_TIME_BASE units
    picture = vin.start_time * vin.time_base if vin.start_time is not None else 0
    return start if picture < 0 else max(0.0, start)


@contextlib.contextmanager
def _glue_threads(up: Upscaler):
    """One torch thread for the glue (conversions, clamps) around a network that runs outside
    torch on the CPU: torch's OpenMP threads spin after each small op, and took the cores the
    runtime and the encoder needed (espcn-x3, 640x360 -> 1080p on 2 cores: 16.6 -> 20.4 frames/s)."""
    outside = up.device.type == "cpu" and isinstance(up, ModelUpscaler) and \
        str(up.runtime).startswith(("openvino", "onnxruntime"))  # a wrapper's resize is torch's work
    threads = torch.get_num_threads()
    if outside:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# The --start/--duration window
# ----------------------------------------------------------------------------------------------

TS_SEEK_MARGIN = 10.0  # seconds: longer than the key frame interval of broadcast and camera TS


def _may_be_transparent(decoder: str, src_fmt: str, first) -> bool:
    """Whether the input's frames carry an alpha that may not be all opaque: a format with alpha
    (VP9's alpha, ProRes 4444, PNG, QuickTime Animation: a later frame may be transparent where
    the first is not), except GIF, which FFmpeg gives as BGRA always: there, the first frame's."""
    return _transparent(first) if decoder == "gif" else has_alpha(src_fmt) and not _alpha_unused(first, decoder)


# decoders of packed pixels whose fourth byte is often padding (a 32-bit BGRA screen capture
# stores 0 there): an alpha of 0 in the whole first frame is unused, not a transparent picture
# (PNG, QuickTime Animation, ProRes 4444, VP9 alpha: a clip may well start fully transparent)
PADDED_ALPHA_DECODERS = {"rawvideo", "bmp"}


def _alpha_unused(frame, decoder: str) -> bool:
    """Whether the input's alpha is an unused byte: 0 in every pixel of the first frame, from a
    decoder of padded packed pixels; `_upscale_frames` then leaves it alone (composited, the
    picture was black) and no output needs to keep it."""
    if decoder not in PADDED_ALPHA_DECODERS or frame is None or not any(c.is_alpha for c in frame.format.components):
        return False
    return int(frame.to_ndarray(format="rgba")[..., 3].max()) == 0


def _transparent(frame) -> bool:
    """Whether the first frame has an alpha plane that is not all opaque (FFmpeg's GIF decoder
    gives BGRA for every GIF; VP9's alpha comes as the stream's alpha_mode instead)."""
    if frame is None or not any(c.is_alpha for c in frame.format.components):
        return False
    return int(frame.to_ndarray(format="rgba")[..., 3].min()) < 255


@dataclass(frozen=True)
class ClipWindow:
    """The part of the input to upscale, in seconds: from `start` (None: the beginning) for
    `duration` (None: to the end), counted from `origin`, the file's first timestamp (MPEG-TS
    files start at 1.4 s or hours in). Output timestamps start at 0 there (as FFmpeg's do: an MP4
    of a broadcast's cut began with hours of empty edit)."""
    start: float | None = None
    duration: float | None = None
    origin: float = 0.0

    @property
    def t0(self) -> float:
        return self.origin + float(self.start or 0.0)

    @property
    def t1(self) -> float | None:
        return self.t0 + self.duration if self.duration is not None else None

    def contains(self, t: float | None) -> bool:
        """Inside the window (everything is, without one; AAC priming has t < 0)."""
        if t is None or (self.start is None and self.t1 is None):
            return True
        return (not self.start or t >= self.t0 - 1e-9) and (self.t1 is None or t < self.t1 - 1e-9)

    def is_past(self, t: float | None) -> bool:
        """Well past the window's end: a second later, for the packets that muxers interleave
        late."""
        return self.t1 is not None and t is not None and t > self.t1 + 1.0

    def shift(self, time_base) -> int:
        """What comes off timestamps in `time_base` units so that the window starts at 0."""
        return int(round(self.t0 / time_base))

    def frames(self, available: int | None, rate) -> int | None:
        """The frames of the window, of `available` in the whole input at `rate` (None: unknown)."""
        if self.duration is not None:
            return int(round(self.duration * float(rate)))
        if self.start and available:
            return max(0, available - int(round(self.start * float(rate))))
        return available


# ----------------------------------------------------------------------------------------------
# The three stages
# ----------------------------------------------------------------------------------------------

class _Pipeline:
    """Decode -> upscale -> encode with bounded queues; errors from any stage stop all."""

    def __init__(self):
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def thread(self, fn, *args) -> threading.Thread:
        def body():
            try:
                fn(*args)
            except BaseException as exc:  # reported by the main thread
                self.errors.append(exc)
                self.stop.set()
        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t

    def join(self, threads: list[threading.Thread]) -> None:
        """Wait for `threads`, stopping them all as soon as one fails."""
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.2)
                if self.errors:
                    self.stop.set()

    def raise_first_error(self) -> None:
        if self.errors:
            exc = self.errors[0]
            if isinstance(exc, av.FFmpegError):
                # strerror: the temporary output's name in the message would mislead
                raise UserError(f"video processing failed: {getattr(exc, 'strerror', None) or exc}") from exc
            raise exc


LONG_RUN = 180.0  # a run expected to take longer gets a one-line estimate up front


class RunEstimate:
    """One line before a long run: once a few frames are done (timed from the first one done,
    so that the runtime's warm-up on it is left out), the frames left x the seconds per frame,
    when that exceeds `LONG_RUN`."""

    def __init__(self, total: int | None, clock=time.monotonic, stream=None):
        self.total, self.clock, self.stream = total, clock, stream or sys.stderr
        self.start: tuple[float, int] | None = None
        self.done = not total

    def update(self, frames_done: int) -> None:
        if self.done:
            return
        now = self.clock()
        if self.start is None:
            self.start = (now, frames_done)
            return
        t0, n0 = self.start
        if frames_done - n0 < 3 or now - t0 < 1.0:
            return
        self.done = True
        per_frame = (now - t0) / (frames_done - n0)
        left = self.total - frames_done
        if left * per_frame > LONG_RUN:
            tqdm.write(f"estimate: {left} more frames x {per_frame:.2f} s/frame = "
                       f"{tqdm.format_interval(left * per_frame)} (Ctrl-C stops it and leaves no "
                       "file; a faster --model or --duration shortens it)", file=self.stream)


# how far past a time a muxer may have written packets of that time (Matroska and MP4 interleave
# within a second or so; FFmpeg's default max_interleave_delta is 10 s)
INTERLEAVE_SLACK = 10.0


def _packet_time(packet) -> float | None:
    """A demuxed packet's presentation time in seconds (None: it has none)."""
    return float(packet.pts * packet.time_base) if packet.pts is not None else None


class _Stages:
    """The decode, upscale and encode stages of one video, and what they share: the queues,
    the muxer's lock (the reader remuxes packets while the writer muxes frames) and counts."""

    def __init__(self, container, out, vout, streams: tuple[dict, dict], plan: _Plan,
                 window: ClipWindow, batch: int):
        self.container, self.out, self.vout = container, out, vout
        self.copies, self.encodes = streams
        self.plan, self.window, self.batch = plan, window, batch
        self.vin = main_video_stream(container)
        self.decoder = video_decoder(self.vin)
        # the size the plan and the encoder were made for (`_plan` reads the same context)
        self.in_size = (self.vin.codec_context.width, self.vin.codec_context.height)
        self.resized = 0  # frames of another size (`to_planned_size`)
        self.rate = frame_rate(self.vin)
        # MPEG-TS/PS have no index: a seek there lands after the key frame the window needs (3
        # frames of 24 were left), so it goes TS_SEEK_MARGIN earlier (or not at all near the
        # start) and the frames before the window are dropped as they are decoded
        unindexed = container.format.name in ("mpegts", "mpeg")
        target = window.t0 - TS_SEEK_MARGIN if unindexed else window.t0
        # a seek lands on a video key frame: before the video's first, that would skip the sound
        # of a file whose picture starts late, so it reads from the beginning instead
        video_from = float(self.vin.start_time * self.vin.time_base) if self.vin.start_time is not None else 0.0
        # a raw stream (.h264, .hevc: no timestamps) cannot seek: its seek failed with EPERM
        # (reported as a bad path) and left the reading at the end; it is read from the start
        timed = not container.format.flags & av.format.Flags.no_timestamps.value
        if window.start and timed and target > max(window.origin, video_from):
            container.seek(int(target / self.vin.time_base), stream=self.vin, backward=True)
        self.streams = [self.vin] + [container.streams[i] for i in (*self.copies, *self.encodes)]
        # every stream moves back by the video's shift, which its time base holds exactly (each
        # rounding t0 in its own put a 1/25 s video 20 ms behind its sound)
        lead = window.shift(self.vin.time_base) * self.vin.time_base
        self.shift = {s.index: int(round(lead / s.time_base)) for s in self.streams}
        self.video_end = self._video_end()  # `within_end`
        self.pipe = _Pipeline()
        self.frames_q: queue.Queue = queue.Queue(maxsize=max(4, 2 * batch * plan.workers))
        self.encode_q: queue.Queue = queue.Queue(maxsize=encode_slots(plan.workers))
        self.mux_lock = threading.Lock()
        self.frames_out = self.packets_copied = self.frames_decoded = 0
        self.damaged = 0  # packets skipped because FFmpeg could not decode or mux them
        self.last_slot = -1  # `onto_frame_slots`
        self.previous, self.filled_to, self.filled = None, -1, 0  # `fill_slots_before`
        self.sound_end: dict[int, float] = {}  # output stream index -> seconds (`pad_sound`)
        self.sound_late: dict[int, float] = {}  # output audio stream -> its start, seconds (`lead_in`)
        self.last_pts: int | None = None  # of the last frame encoded (`is_repeat_time`)
        self.repeats = 0  # frames dropped for a time not after the previous frame's
        self.busy = {"decode": 0.0, "upscale": 0.0, "encode": 0.0}  # seconds each stage worked
        self.busy_lock = threading.Lock()  # side-by-side upscaling adds to it from several threads
        self.durations: dict[int, int] = {}  # pts -> duration of the frames sent to the encoder
        self.reorder_delay: int | None = None  # the first packet's pts - dts (`hold_to_the_end`)
        self.captions: dict[int, bytes] = {}  # pts -> closed captions of those frames
        # `continue_clock`: formats whose clock may restart, the seconds added since, each
        # stream's last dts (seconds, offset included)
        self.discontinuous = bool(container.format.flags & av.format.Flags.ts_discont.value)
        self.clock_offset, self.last_dts = 0.0, {}
        self.last_end = None  # seconds (on the output's clock) where the last frame encoded ends
        self.read_to_end = False  # the demuxer ran out (not a stop at the window's end)
        self.decoded_end = 0.0  # seconds (the input's clock) where the latest frame decoded ends
        self.garbage = 0  # bytes of frames encoded since the last collection (`collect_frames`)

    def read(self) -> None:
        """Thread 1: demux; decode the video's frames of the window onto `frames_q`; remux the
        packets of the copied streams; re-encode those of the re-encoded ones."""
        early = self.read_early_cues()
        for packet in self.container.demux(self.streams):
            if self.pipe.stop.is_set():
                return
            self.continue_clock(packet)
            if packet.stream.index == self.vin.index:
                if not self.read_video(packet):
                    self.flush_reencoded()
                    return
                continue
            when = _packet_time(packet)
            if packet.stream.type == "subtitle" and packet.size:
                if early and when is not None and when < self.window.t0:
                    continue  # `read_early_cues` passed it on
                when = self.clip_cue(packet, when)
            self.pass_on(packet, when)
        self.read_to_end = True
        self.pipe.put(self.frames_q, _END)

    def continue_clock(self, packet) -> None:
        """MPEG-TS/PS whose clock goes back (`cat a.ts b.ts`, joined recordings, a broadcast's
        splice): the muxer refused the first packet back in time ("video processing failed:
        Invalid argument"). As FFmpeg does for these formats, every stream is moved on from there
        by one offset, so that the clock continues where it was."""
        if not self.discontinuous or packet.dts is None:
            return
        index, tb = packet.stream.index, packet.time_base
        t = float(packet.dts * tb) + self.clock_offset
        last = self.last_dts.get(index)
        if last is not None and t < last - 0.1:
            self.clock_offset += last - t + float(packet.duration * tb if packet.duration else 0)
            t = float(packet.dts * tb) + self.clock_offset
        self.last_dts[index] = t
        if self.clock_offset:
            shift = int(round(self.clock_offset / tb))
            packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift

    def pass_on(self, packet, when: float | None) -> None:
        """A packet of a copied or re-encoded stream into the output, if it falls in the window."""
        cover = is_cover_art(packet.stream)  # one packet, at 0, whatever the window
        if packet.size and not self.window.contains(when) and not cover:
            return
        index = packet.stream.index
        try:
            if index in self.encodes:
                self.reencode(packet, self.encodes[index], self.shift[index])
            elif packet.size and not self.is_priming_without_times(packet, self.shift[index]):
                self.lead_in(self.copies[index], [packet], self.shift[index])
                self.note_sound_end(self.copies[index], [packet], self.shift[index])
                remux(self.out, packet, self.copies[index], 0 if cover else self.shift[index], self.mux_lock)
                self.packets_copied += 1
        except av.InvalidDataError:  # a damaged packet (a broken download, a TS with errors):
            self.damaged += 1        # skipped, as FFmpeg goes on past it

    def is_priming_without_times(self, packet, shift: int = 0) -> bool:
        """An audio packet mostly before 0 (an encoder's priming: AAC's, MP3's, which the input's
        players skip by its times) going into a container that stores none (AVI): played from the
        start there, it put all the sound that long behind the picture (21 ms for AAC at 48 kHz)."""
        if self.out.format.name not in NO_PTS_MUXERS or packet.stream.type != "audio" or packet.pts is None \
                or not packet.duration:
            return False
        return 2 * (packet.pts - shift) + packet.duration <= 0

    def read_early_cues(self) -> bool:
        """With --start: pass on the subtitles that began before the window and are on screen at
        its start, read from the file's beginning in a second demuxer - the seek lands on a key
        frame, after which such a cue may lie in the file. True when it ran (the main reading
        then leaves cues that began before the window to it)."""
        subtitles = [s.index for s in self.streams if s.type == "subtitle"]
        if not (self.window.start and subtitles):
            return False
        t0 = self.window.t0
        with av.open(self.container.name) as again:
            for packet in again.demux():
                when = _packet_time(packet)
                if when is not None and when > t0 + INTERLEAVE_SLACK:
                    break  # muxers interleave by time: every cue that began before t0 is read
                if packet.stream.index in subtitles and packet.size and when is not None and when < t0:
                    self.pass_on(packet, self.clip_cue(packet, when))
        return True

    def clip_cue(self, packet, when: float | None) -> float | None:
        """A subtitle read while on screen at the window's start is kept from that start (it was
        dropped); returns the cue's start time after that."""
        t0 = self.window.t0
        if not self.window.start or when is None or not packet.duration or when >= t0:
            return when
        cut = int(round((t0 - when) / packet.time_base))
        if cut >= packet.duration:
            return when  # over before the window: left out as before
        packet.pts += cut
        if packet.dts is not None:
            packet.dts += cut
        packet.duration -= cut
        return float(packet.pts * packet.time_base)

    def read_video(self, packet) -> bool:
        """The frames of a video packet in the window onto `frames_q`; False: stop reading."""
        t = time.perf_counter()
        try:
            frames = self.decoder.decode(packet)
        except av.InvalidDataError:  # damaged: its frame is missing, the next key frame decodes
            frames = []
            self.damaged += 1
        self.busy["decode"] += time.perf_counter() - t
        for frame in frames:
            if frame.pts is None:  # raw streams: number the frames
                frame.pts = int(round(self.frames_decoded / float(self.rate) / self.vin.time_base))
            self.frames_decoded += 1
            if frame.time is not None:  # `cut_short`
                length = frame.duration * frame.time_base if frame.duration else 1 / self.rate
                self.decoded_end = max(self.decoded_end, float(frame.time + length))
            frame = self.to_planned_size(frame)
            if self.window.is_past(frame.time):
                self.pipe.put(self.frames_q, _END)
                return False
            if self.window.contains(frame.time) and not self.pipe.put(self.frames_q, frame):
                return False
        return True

    def to_planned_size(self, frame):
        """`frame` at the size the upscaling was planned for: a stream whose size changes midway
        (a WebRTC or MediaRecorder recording, a broadcast's ad break) had frames the Y path could
        not put back (a traceback) and the RGB path stretched silently. Such frames are scaled
        (libswscale's bicubic, aspect as the encoder's output) with one note, as FFmpeg scales
        them to its encoder's size."""
        if (frame.width, frame.height) == self.in_size:
            return frame
        if not self.resized:  # tqdm.write: the progress bar may be on screen
            tqdm.write(f"note: the video's frame size changes at {frame.time or 0:.2f} s "
                       f"({self.in_size[0]}x{self.in_size[1]} -> {frame.width}x{frame.height}); such frames "
                       f"are scaled to {self.in_size[0]}x{self.in_size[1]} before upscaling", file=sys.stderr)
        self.resized += 1
        return frame.reformat(width=self.in_size[0], height=self.in_size[1], interpolation="BICUBIC")

    def reencode(self, packet, stream, shift: int) -> None:
        """Decode a packet of a re-encoded stream and encode it into `stream`, timestamps moved
        back by `shift`: audio (an empty packet flushes the decoder, and then the encoder) or
        a text subtitle (one cue a packet, its timing the packet's)."""
        if stream.type == "subtitle":
            decoded = packet.stream.codec_context.decode2(packet) if packet.size else None
            if decoded is None:  # MP4's empty cues between lines (2 bytes) decode to nothing
                return
            cue = stream.codec_context.encode_subtitle(decoded)
            cue.pts = cue.dts = packet.pts - shift if packet.pts is not None else None
            cue.duration, cue.time_base, cue.stream = packet.duration, packet.time_base, stream
            packets = [cue]
        else:
            packets = []
            for frame in packet.decode():
                if frame.pts is not None:
                    frame.pts -= shift
                packets += stream.encode(frame)
            if not packet.size:
                packets += stream.encode(None)
            packets = [p for p in packets if not self.is_priming_without_times(p)]
            self.lead_in(stream, packets)
            self.note_sound_end(stream, packets)
        with self.mux_lock:
            self.out.mux(packets)

    def lead_in(self, stream, packets, shift: int = 0) -> None:
        """Before the first sound of an output audio `stream` in AVI or MXF, which store no start
        time (their sound plays from the picture's first frame): sound that starts later (a
        camera's, a --start cut between two packets) played that much early (0.5 s; MXF also lost
        the frames past the sound's end). PCM gets silence up to its start; other sound is noted
        (`sound_late`)."""
        if stream.type != "audio" or stream.index in self.sound_late or \
                self.out.format.name not in NO_PTS_MUXERS | VIDEO_FIRST.keys():
            return
        first = next((p for p in packets if p.pts is not None), None)
        if first is None:
            return
        late = float((first.pts - shift) * first.time_base)
        padded = late > 0 and stream.codec_context.name.startswith("pcm_s")
        if padded:
            self.silence(stream, 0.0, late)
        self.sound_late[stream.index] = 0.0 if padded else late

    def silence(self, stream, start: float, end: float) -> None:
        """PCM silence in the audio `stream` from `start` to `end` (seconds, the output's clock)."""
        cc = stream.codec_context
        sample_bytes = int(re.search(r"\d+", cc.name).group()) // 8  # pcm_s24le: 3 bytes, its format's s32 4
        rate, frame_bytes = cc.sample_rate, sample_bytes * cc.layout.nb_channels
        at, stop = int(round(start * rate)), int(round(end * rate))
        while at < stop:
            n = min(stop - at, rate // 25)
            packet = av.Packet(bytes(n * frame_bytes))
            packet.pts = packet.dts = at
            packet.duration, packet.time_base, packet.stream = n, Fraction(1, rate), stream
            with self.mux_lock:
                self.out.mux(packet)
            at += n

    def note_sound_end(self, stream, packets, shift: int = 0) -> None:
        """Where the sound muxed into the output audio `stream` ends, in seconds (`pad_sound`)."""
        for p in packets:
            if stream.type == "audio" and p.pts is not None:
                end = float((p.pts - shift + (p.duration or 0)) * p.time_base)
                self.sound_end[stream.index] = max(end, self.sound_end.get(stream.index, end))

    def pad_sound(self) -> None:
        """MXF keeps only whole edit units, each a frame with its sound: its muxer dropped every
        frame past the end of the sound (a clip whose sound stops early lost its last frames, a
        video that starts after its sound its last 0.2 s). Its PCM sound (the only kind it holds)
        is lengthened with silence to the picture's end, when all else is muxed."""
        if self.out.format.name not in VIDEO_FIRST or self.last_end is None or self.pipe.stop.is_set():
            return
        for stream in [*self.copies.values(), *self.encodes.values()]:
            cc = stream.codec_context
            if stream.type == "audio" and cc.name.startswith("pcm_s") and stream.index in self.sound_end:
                self.silence(stream, self.sound_end[stream.index], self.last_end)

    def flush_reencoded(self) -> None:
        """The audio encoders' buffered tail, when reading stops at the window's end before the
        demuxer's final empty packets (which flush them otherwise) arrive."""
        if self.pipe.stop.is_set():
            return
        for stream in self.encodes.values():
            if stream.type == "audio":
                packets = stream.encode(None)
                self.note_sound_end(stream, packets)
                with self.mux_lock:
                    self.out.mux(packets)

    def write(self) -> None:
        """Thread 2: encode and mux the upscaled frames of `encode_q`; flush the encoder."""
        while True:
            item = self.pipe.get(self.encode_q)
            if item is _END:
                break
            for frame in item:
                t = time.perf_counter()
                self.onto_frame_slots(frame)
                if self.is_repeat_time(frame):
                    continue
                if frame.opaque is not None:
                    self.captions[frame.pts] = frame.opaque
                if frame.duration:
                    self.durations[frame.pts] = frame.duration
                    self.last_end = (frame.pts + frame.duration) * frame.time_base
                packets = self.fill_slots_before(frame) + self.vout.encode(frame)
                self.busy["encode"] += time.perf_counter() - t
                self.mux_video(packets)
                self.frames_out += 1
                self.collect_frames(frame)
        if not self.pipe.stop.is_set():
            self.mux_video(self.vout.encode(None), last=True)

    def collect_frames(self, frame) -> None:
        """A full garbage collection once `FRAME_GARBAGE` bytes of frames were encoded since the
        last (see there)."""
        self.garbage += sum(p.buffer_size for p in frame.planes)
        if self.garbage >= FRAME_GARBAGE:
            gc.collect()
            self.garbage = 0

    def fill_slots_before(self, frame) -> list:
        """Where the container stores frames one after another with no time of their own (MXF,
        Y4M; AVI reads a first frame that starts late at 0), the empty frame slots before
        `frame` (a video that starts after its sound, a variable rate's gaps) filled with the
        frame before (or `frame` itself, before the first), as FFmpeg does for constant-rate
        outputs: left empty, every later frame came that much early (0.2 s before its sound).
        Returns the packets encoded."""
        base = self.vout.codec_context.time_base
        if self.out.format.name not in SLOT_MUXERS or frame.pts is None or base != 1 / self.rate:
            return []
        packets, model = [], self.previous if self.previous is not None else frame
        pts, duration = model.pts, model.duration
        for slot in range(self.filled_to + 1, frame.pts):
            model.pts, model.duration = slot, 1
            packets += self.vout.encode(model)
            self.filled += 1
        model.pts, model.duration = pts, duration
        self.previous, self.filled_to = frame, frame.pts
        return packets

    def is_repeat_time(self, frame) -> bool:
        """Whether `frame` is to be dropped for a time at or before the previous frame's (webcam
        and screen captures repeat a timestamp): MP4's muxer refused the whole run ("Invalid
        argument") and Matroska stored both; FFmpeg's variable-rate output drops such a frame too."""
        if frame.pts is None:
            return False
        if self.last_pts is not None and frame.pts <= self.last_pts:
            self.repeats += 1
            return True
        self.last_pts = frame.pts
        return False

    def onto_frame_slots(self, frame) -> None:
        """`frame`'s time in the encoder's time base where it is not the input's
        (`media.video.output_time_base`): where that counts frames (1/fps), its nearest slot after
        the last; else (a finer clock) the frame grid's time where the frame is within 0.6 ms of
        it (a millisecond clock's rounding), its own time otherwise (variable frame rates)."""
        base = self.vout.codec_context.time_base
        if base == self.vin.time_base or frame.pts is None:
            return
        if base == 1 / self.rate:
            slot = max(self.last_slot + 1, int(round(frame.time / base)))
            frame.pts, frame.time_base, frame.duration, self.last_slot = slot, base, 1, slot
            return
        def snapped(t):
            on_grid = round(t * self.rate) / self.rate
            return on_grid if abs(on_grid - t) < 0.0006 else t
        duration = snapped(frame.duration * frame.time_base) if frame.duration else 0
        frame.pts, frame.time_base = int(round(snapped(frame.time) / base)), base
        frame.duration = int(round(duration / base))

    def mux_video(self, packets, last: bool = False) -> None:
        """Mux encoded packets with their frames' durations: encoders drop them, and the muxer
        then guesses the last frame's from the average rate (a GIF's closing 1 s hold became 0.36 s).
        `last`: the encoder's final packets (`hold_to_the_end`)."""
        packets = [self.keep_captions(p) for p in packets]
        if self.reorder_delay is None and packets and None not in (packets[0].pts, packets[0].dts):
            self.reorder_delay = packets[0].pts - packets[0].dts  # B-frames: the encoder's first dts is early
        for packet in packets:
            duration = self.durations.pop(packet.pts, None)
            if duration:
                packet.duration = duration
            self.within_end(packet)
        if last and packets:
            self.hold_to_the_end(packets[-1])
        with self.mux_lock:
            self.out.mux(packets)

    def keep_captions(self, packet):
        """`packet` with the closed captions of its frame, where the encoder makes H.264/HEVC."""
        cc = self.captions.pop(packet.pts, None)
        codec = self.vout.codec_context.name
        return with_captions(packet, codec, cc) if cc and codec in CAPTION_SEI_HEADERS else packet

    def hold_to_the_end(self, packet) -> None:
        """MP4 times a sample to the next one's dts, the last by its own duration: the samples'
        times add up to the last packet's dts plus its duration, from the first's dts. With
        B-frames the last packet is not the last frame: it is given what takes that sum to the
        last frame's end (at most `video_end`). Its own frame's end (a GIF's closing 0.5 s hold
        read 0.65 s of 1.05 s before) is one frame too far where that frame shows before the last
        (the stream's mean rate read 24.67 for 25 fps)."""
        end = self.last_end
        if FAMILIES.get(self.out.format.name) != "mp4" or end is None or None in (packet.pts, packet.dts):
            return
        if self.video_end is not None:
            end = min(end, self.video_end)
        duration = int(round(end / packet.time_base)) - packet.dts - (self.reorder_delay or 0)
        if duration > 0:
            packet.duration = duration

    def within_end(self, packet) -> None:
        """`packet`'s duration cut at `video_end`: an MP4 input's frame durations are its dts
        steps (with B-frames, a 13-frame gap given to another frame), which took the output's
        end past the input's once the last frame was held to its end."""
        if self.video_end is None or packet.pts is None or not packet.duration:
            return
        left = int(round(self.video_end / packet.time_base)) - packet.pts
        if 0 < left < packet.duration:
            packet.duration = left

    def cut_short(self) -> tuple[float, float] | None:
        """(where the video stopped, where the header says it ends), in seconds from the file's
        start, where the file ran out well before its header's end (or the window's): a download,
        copy or recording cut off (the frames that were there were written without a word)."""
        header_end = header_video_end(self.container)
        if not self.read_to_end or header_end is None or self.clock_offset:
            return None
        wanted = min(header_end, self.window.t1) if self.window.t1 is not None else header_end
        if wanted - self.decoded_end <= max(0.5, 3 / float(self.rate)):
            return None
        return self.decoded_end - self.window.origin, header_end - self.window.origin

    def _video_end(self):
        """Where the video ends on the output's clock, in seconds: the input stream's end (moved
        by the window's start) and the --duration window's; None where neither is known."""
        v, ends = self.vin, []
        if v.duration is not None and v.start_time is not None:
            ends.append((v.start_time + v.duration - self.shift[v.index]) * v.time_base)
        if self.window.duration is not None:
            ends.append(self.window.duration)
        return min(ends) if ends else None

    def upscale(self, bar, estimate: RunEstimate) -> None:
        """The calling thread: batches of decoded frames from `frames_q`, upscaled onto `encode_q`
        in order; with `plan.workers` > 1 that many side by side on a thread pool."""
        workers = self.plan.workers
        pool = ThreadPoolExecutor(workers, thread_name_prefix="upscale") if workers > 1 else None
        pending: deque = deque()  # upscaled (or being upscaled) groups, oldest first
        frames_done, done = 0, False
        try:
            while pending or not done:
                if not done and len(pending) < workers and not self.pipe.stop.is_set():
                    group, done = self._next_group()
                    if group:
                        pending.append(pool.submit(self._upscale, group) if pool else self._upscale(group))
                    continue
                if self.pipe.stop.is_set():
                    break
                frames = pending.popleft()
                frames = frames.result() if pool else frames
                if not self.pipe.put(self.encode_q, frames):
                    break
                bar.update(len(frames))
                frames_done += len(frames)
                estimate.update(frames_done)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
        self.pipe.put(self.encode_q, _END)

    def _next_group(self) -> tuple[list, bool]:
        """Up to `batch` decoded frames, and whether the input (or a stop) ended them."""
        group = []
        while len(group) < self.batch:
            item = self.pipe.get(self.frames_q)
            if item is _END:
                return group, True
            group.append(item)
        return group, False

    def _upscale(self, group: list) -> list:
        t = time.perf_counter()
        frames = _upscale_frames(group, self.plan, self.shift[self.vin.index])
        with self.busy_lock:
            self.busy["upscale"] += time.perf_counter() - t
        return frames

    def run(self, progress: bool) -> None:
        """All three stages to the end of the input or the window; the first error raised."""
        total = self.window.frames(frame_count(self.container), self.rate)
        bar = progress_bar(total, progress, desc="frames", unit=" frames")
        estimate = RunEstimate(total if progress else None)
        # the objects made before (torch's, the model's, the runtime's: ~90 ms a full collection)
        # are left out of the writer's collections while it runs (`collect_frames`), then handed back
        gc.freeze()
        threads = [self.pipe.thread(self.read), self.pipe.thread(self.write)]
        try:
            self.upscale(bar, estimate)
        except BaseException:
            self.pipe.stop.set()
            raise
        finally:
            self.pipe.join(threads)
            bar.close()
            gc.unfreeze()
        self.pipe.raise_first_error()


def _pump(container, out, vout, streams: tuple[dict, dict], plan: _Plan, window: ClipWindow,
          batch: int, progress: bool) -> dict:
    """Run the three stages until the input (or the --start/--duration window) ends; a summary."""
    stages = _Stages(container, out, vout, streams, plan, window, batch)
    t = time.perf_counter()
    stages.run(progress)
    stages.pad_sound()
    wall = time.perf_counter() - t
    if not stages.frames_out:
        raise UserError("no video frames in the chosen --start/--duration window"
                        if window.start or window.duration else "the video stream has no frames")
    return {"frames": stages.frames_out, "copied_packets": stages.packets_copied,
            "size": (vout.width, vout.height), "rate": stages.rate, "codec": vout.codec_context.name,
            "pix_fmt": plan.out_fmt, "reencoded": [f"{s.type} as {s.codec_context.name}" for s in stages.encodes.values()],
            "fps": stages.frames_out / wall if wall else None,  # end to end, stages overlapping
            "workers": plan.workers, "damaged_packets": stages.damaged, "repeated_times": stages.repeats,
            "filled_slots": stages.filled,
            "sound_early": max((t for t in stages.sound_late.values() if t >= 0.01), default=0.0),
            "cut_short": stages.cut_short(),
            "ms_per_frame": {k: 1000 * v / stages.frames_out for k, v in stages.busy.items()}}


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------

def _upscale_frames(group, plan: _Plan, shift: int) -> list:
    """Decoded frames -> upscaled frames (pts, duration and colour tags carried over)."""
    keep = has_alpha(plan.out_fmt)
    ready = group if plan.alpha_unused else [_alpha_settled(f, keep) for f in group]
    results = _upscale_yuv(ready, plan) if plan.y_model else _upscale_rgb(ready, plan)
    for src, o in zip(group, results):
        carry_frame_props(src, o, shift)
    return results


def _alpha_settled(f: av.VideoFrame, keep: bool) -> av.VideoFrame:
    """Frame `f` as it is upscaled: where its alpha is kept (`keep`), the colour of its fully
    transparent pixels filled from the nearest visible one (`fill_hidden_colour`: else the model
    and libswscale mix that hidden colour, often black or garbage, into the visible edge: a dark
    fringe of up to ~100 levels on a sprite); where the output is opaque, composited over black
    (dropping the alpha would show the hidden colour itself, and hard edges). `f` itself where
    that changes nothing (no alpha, nothing hidden, all opaque); a new frame otherwise, as the
    decoder's frames may be its reference pictures."""
    if not has_alpha(f.format.name):
        return f
    bits = f.format.components[0].bits
    planar = (is_planar_yuv(f.format) or f.format.name.startswith("gbrap")) and bits <= 16  # not float
    dtype = np.uint16 if bits > 8 else np.uint8
    if planar:
        planes = [plane_view(p, dtype) for p in f.planes]
        alpha_at = next(c.plane for c in f.format.components if c.is_alpha)
        alpha = planes[alpha_at]
    else:  # packed RGBA in some order, gray with alpha: as RGBA, which libswscale makes exactly
        bits = 16 if bits > 8 else 8
        planes = [f.to_ndarray(format="rgba64le" if bits > 8 else "rgba")]
        alpha = planes[0][..., 3]
    opaque = (1 << bits) - 1
    if (alpha.min() > 0 or not alpha.any()) if keep else alpha.min() == opaque:
        return f
    if not planar:
        planes[0][..., :3] = _settled_planes(planes[0][..., :3], alpha, None if keep else opaque, 0)
        o = av.VideoFrame.from_ndarray(planes[0], format="rgba64le" if bits > 8 else "rgba")
    else:
        o = av.VideoFrame(f.width, f.height, f.format.name)
        out = [plane_view(p, dtype) for p in o.planes]
        out[alpha_at][:] = alpha
        colour = [k for k in range(len(planes)) if k != alpha_at]
        for shape in dict.fromkeys(planes[k].shape for k in colour):  # one fill for planes of a size
            ks = [k for k in colour if planes[k].shape == shape]
            black = np.array([_black(f, k) for k in ks], np.float32)
            settled = _settled_planes(np.dstack([planes[k] for k in ks]), alpha, None if keep else opaque, black)
            for i, k in enumerate(ks):
                out[k][:] = settled[..., i]
    copy_colour_tags(f, o)
    return o


def _settled_planes(planes: np.ndarray, alpha: np.ndarray, opaque: int | None, black) -> np.ndarray:
    """`planes` (h, w, c) filled by `alpha` (`opaque` None) or composited over `black` by
    `alpha` / `opaque`. `alpha` may be larger: subsampled chroma planes take each block's (a block
    is hidden where all its pixels are; composited by its mean alpha)."""
    h, w = planes.shape[:2]
    by, bx = -(-alpha.shape[0] // h), -(-alpha.shape[1] // w)
    if (by, bx) != (1, 1):
        padded = np.pad(alpha, ((0, h * by - alpha.shape[0]), (0, w * bx - alpha.shape[1])), mode="edge")
        blocks = padded.reshape(h, by, w, bx)
        alpha = blocks.max((1, 3)) if opaque is None else blocks.mean((1, 3))
    if opaque is None:  # Planes holds 1 or 3 colour planes: U and V go with a spare copy of U
        n = planes.shape[2]
        padded = planes if n in (1, 3) else np.dstack([planes, planes[..., :1]])
        return fill_hidden_colour(Planes(padded, alpha[..., None].astype(planes.dtype))).color[..., :n]
    a = (alpha.astype(np.float32) / opaque)[..., None]
    return np.rint(black + (planes.astype(np.float32) - black) * a).astype(planes.dtype)


def _black(f: av.VideoFrame, plane: int) -> int:
    """The value of black in `plane` of planar frame `f`: luma 16 (limited range) or 0, chroma
    the middle, RGB 0; scaled to the frame's bit depth."""
    if not is_planar_yuv(f.format):
        return 0
    bits = f.format.components[0].bits
    if plane:
        return 1 << (bits - 1)
    full = f.format.name.startswith("yuvj") or f.color_range == 2
    return 0 if full else 16 << (bits - 8)


def _upscale_yuv(group, plan: _Plan) -> list:
    """The network on the Y planes; the chroma planes by libswscale's bicubic (each frame
    scaled whole to the output size, its Y plane then replaced): planar YUV `plan.work`
    throughout, no RGB, and the chroma in ~1/10 of the time of a bicubic in torch."""
    oh, ow = plan.size
    work, bits = plan.work, plan.bits
    dtype = np.uint16 if bits > 8 else np.uint8
    frames = [f if f.format.name == work.name else f.reformat(format=work.name) if is_yuv(f.format.name)
              else f.reformat(format=work.name, **_conversion(f, work.name)) for f in group]
    luma = np.stack([plane_view(f.planes[0], dtype) for f in frames])[..., None]
    # 8-bit units: 10-bit luma 940 (white) is 235 * 4
    y_up = plan.tiler.upscale(luma, tile=plan.tile, maxval=255.0 * 2 ** (bits - 8))
    results = []
    for k, f in enumerate(frames):
        o = f.reformat(width=ow, height=oh, interpolation="BICUBIC")
        plane_view(o.planes[0], dtype)[:] = y_up[k, ..., 0]
        results.append(o)
    return results


def _upscale_rgb(group, plan: _Plan) -> list:
    """The RGB model on rgb24/rgb48 frames, converted back to `plan.out_fmt` with each input
    frame's colour matrix and range."""
    work = plan.work
    rgb = np.stack([frame_rgb(f, work.name) for f in group])
    up = plan.tiler.upscale(rgb[..., :3], tile=plan.tile)
    if rgb.shape[-1] == 4:  # the alpha plane by libswscale's bicubic, as the YUV path's chroma
        up = np.concatenate([up, _resized_planes(rgb[..., 3], plan.size)[..., None]], axis=-1)
    results = []
    for k, f in enumerate(group):
        o = av.VideoFrame.from_ndarray(up[k], format=work.name)
        results.append(o.reformat(format=plan.out_fmt, interpolation=EXACT_SWS, **_conversion(f, plan.out_fmt)))
    return results


def _resized_planes(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) uint8/uint16 planes resized to `size` (h, w) by libswscale's bicubic."""
    gray = "gray" if planes.dtype == np.uint8 else "gray16le"
    return np.stack([av.VideoFrame.from_ndarray(p, format=gray).reformat(
        width=size[1], height=size[0], interpolation="BICUBIC").to_ndarray() for p in planes])


def _conversion(f: av.VideoFrame, out_fmt: str) -> dict:
    """libswscale's target matrix and range for pictures of frame `f` made into `out_fmt`: those
    the output is tagged with (`media.video.colour_tags`)."""
    tags = colour_tags(f, out_fmt)
    return {"dst_colorspace": tags["colorspace"], "dst_color_range": tags["color_range"] or None}
