"""`upsample video IN -o OUT`: upscale a video's frames; copy its other streams untouched.

Three threads run at once: one demuxes and decodes (and remuxes the audio, subtitle and data
packets as they are, only their stream changed), the calling thread upscales batches of frames,
one encodes and muxes. Bounded queues between them keep memory flat. Each frame keeps its pts,
time base and duration, so the frame rate (also a variable one) and the duration are the input's.

Y-channel models run on the Y plane of a planar YUV frame, with the chroma planes resized by
`degrade.imresize`: no RGB round trip. RGB models get rgb24 (rgb48 for deeper video) and their
output is converted back to the output pixel format with the input's colour matrix and range.
The output is written under a temporary name and renamed when complete; on failure or Ctrl-C the
temporary file is removed.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

from ..data.degrade import imresize, output_size
from ..errors import UserError
from ..media.imageio import atomic_output
from .infer import BATCHES, Tiler, fastest_batch, make_upscaler
from ..cli.options import add_model_options
from .sizes import parse_count, parse_size
from .upscaler import BicubicUpscaler, ModelUpscaler, Upscaler

COPY_TYPES = ("audio", "subtitle", "data")
_END = object()


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


def is_planar_yuv(fmt: av.VideoFormat) -> bool:
    return (fmt.name.startswith("yuv") and len(fmt.components) == 3
            and sorted(c.plane for c in fmt.components) == [0, 1, 2])


def plane_view(plane, dtype) -> np.ndarray:
    """The pixels of a frame plane as a (height, width) array over the frame's own memory."""
    a = np.frombuffer(plane, dtype)
    return a.reshape(plane.height, plane.line_size // a.itemsize)[:, :plane.width]


def open_input(path: Path):
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


def first_frame(path: Path, vin_index: int):
    """The first decoded frame (for its rotation and format), from a separate read."""
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams[vin_index]):
            return frame
    raise UserError(f"{path}: the video stream has no decodable frame")


def _check_encoder(codec: str, pix_fmt: str | None, default_fmt: str) -> str:
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


def upscale_video(src: str | os.PathLike, dst: str | os.PathLike, up: Upscaler, *,
                  codec: str = "libx264", crf: int | None = None, preset: str | None = None,
                  pix_fmt: str | None = None, start: float | None = None,
                  duration: float | None = None, batch: int | None = 1, tile: int | None = None,
                  max_memory: int | None = None, progress: bool = False,
                  tile_batch: int | None = None) -> dict:
    """Upscale `src` into `dst` (see the module docstring). Returns a summary. `batch`: frames
    per model call; None: `frames_per_call` picks it for the device. `tile_batch`: tiles per
    model call when frames are tiled (None: `Tiler` picks it)."""
    src, dst = Path(src), Path(dst)
    container = open_input(src)
    try:
        vin = container.streams.video[0]
        cc = vin.codec_context
        in_fmt = cc.format
        out_fmt = _check_encoder(codec, pix_fmt, in_fmt.name)
        oh, ow = output_size(cc.height, up.scale), output_size(cc.width, up.scale)
        y_model = isinstance(up, ModelUpscaler) and up.spec.input == "y"
        fmt = av.VideoFormat(out_fmt)
        deep = max(fmt.components[0].bits, in_fmt.components[0].bits) > 8
        if y_model:  # planar YUV to work in; the encoder converts it to out_fmt if that differs
            work = fmt if is_planar_yuv(fmt) else av.VideoFormat("yuv420p10le" if deep else "yuv420p")
            full = work.name.startswith("yuvj") or cc.color_range == 2
            net = YPlaneUpscaler(up, full_range=full)
        else:
            work, net = av.VideoFormat("rgb48le" if deep else "rgb24"), up
        bits = work.components[0].bits
        tiler = Tiler(net, tile=tile, max_memory=max_memory, progress=False, tile_batch=tile_batch)
        chans = 1 if y_model else 3
        dtype = np.uint16 if bits > 8 else np.uint8
        if batch is None:
            batch = frames_per_call(net, tiler, cc.height, cc.width, chans, dtype, (oh, ow))
        tile_side = tiler.plan_tile(cc.height, cc.width, chans, dtype, batch=batch,
                                    reserved=batch * oh * ow * chans * np.dtype(dtype).itemsize)
        plan = _Plan(net, tiler, tile_side, work, out_fmt, y_model, bits, (oh, ow))

        first = first_frame(src, vin.index)
        suffix = dst.suffix or ".mp4"
        with atomic_output(dst, suffix=".part" + suffix) as tmp:  # the container goes by suffix
            try:
                out = av.open(str(tmp), "w")
            except (av.FFmpegError, ValueError) as exc:
                raise UserError(f"cannot write {suffix} videos: {exc}") from None
            try:
                vout, copies = _open_streams(container, out, plan, first, codec, crf, preset)
                summary = _pump(container, out, vout, copies, plan, start, duration, batch, progress)
            except BaseException:
                try:
                    out.close()
                except Exception:  # the first error is the one to report; the file goes anyway
                    pass
                raise
            out.close()  # flushes the encoders: its errors count
        summary["batch"] = batch
        return summary
    finally:
        container.close()


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


def _rate(vin) -> Fraction:
    return vin.average_rate or vin.guessed_rate or Fraction(25)


def _open_streams(container, out, plan: _Plan, first, codec, crf, preset):
    """Add the encoded video stream (the input's timing, colour tags, aspect and rotation) and
    one copied stream per audio/subtitle/data stream; write the header."""
    vin = container.streams.video[0]
    cc = vin.codec_context
    oh, ow = plan.size
    vout = out.add_stream(codec, rate=_rate(vin))
    vout.width, vout.height, vout.pix_fmt = ow, oh, plan.out_fmt
    vout.time_base = vin.time_base
    vout.codec_context.time_base = vin.time_base
    for attr in ("color_primaries", "color_trc", "colorspace", "color_range"):
        try:
            setattr(vout.codec_context, attr, getattr(cc, attr))
        except (AttributeError, ValueError, TypeError):
            pass
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

    copies = {}
    for s in container.streams:
        if s.index == vin.index:
            continue
        if s.type not in COPY_TYPES:
            print(f"note: stream #{s.index} ({s.type}) is not copied", file=sys.stderr)
            continue
        try:
            copies[s.index] = out.add_stream_from_template(s)
        except (av.FFmpegError, ValueError) as exc:
            print(f"note: stream #{s.index} ({s.type}, {s.codec_context.name if s.codec_context else '?'}) "
                  f"cannot go into {Path(out.name).suffix}: dropped ({exc})", file=sys.stderr)
    try:
        out.metadata.update({k: v for k, v in container.metadata.items() if k != "encoder"})
        out.start_encoding()
    except (av.FFmpegError, ValueError) as exc:
        raise UserError(f"cannot write this video: {exc}") from None
    return vout, copies


def _pump(container, out, vout, copies, plan: _Plan, start, duration, batch, progress) -> dict:
    """Run the three stages until the input (or the --start/--duration window) ends."""
    vin = container.streams.video[0]
    rate = _rate(vin)
    t0 = float(start or 0.0)
    t1 = t0 + duration if duration is not None else None
    if start:
        container.seek(int(start / vin.time_base), stream=vin, backward=True)
    streams = [vin] + [container.streams[i] for i in copies]
    shift = {s.index: int(round(t0 / s.time_base)) if start else 0 for s in streams}
    total = vin.frames or (int(float(container.duration / av.time_base) * float(rate))
                           if container.duration else None)
    if duration is not None:
        total = int(round(duration * float(rate)))
    elif start and total:
        total = max(0, total - int(round(t0 * float(rate))))

    pipe = _Pipeline()
    frames_q: queue.Queue = queue.Queue(maxsize=max(4, 2 * batch))
    encode_q: queue.Queue = queue.Queue(maxsize=2)
    mux_lock = threading.Lock()
    counts = {"out": 0, "copied": 0}

    def in_window(t: float | None) -> bool:
        """Inside --start/--duration (everything is, without them; AAC priming has t < 0)."""
        if t is None or (start is None and t1 is None):
            return True
        return (not start or t >= t0 - 1e-9) and (t1 is None or t < t1 - 1e-9)

    def read():
        index = 0
        for packet in container.demux(streams):
            if pipe.stop.is_set():
                return
            if packet.stream.index == vin.index:
                for frame in packet.decode():
                    if frame.pts is None:  # raw streams: number the frames
                        frame.pts = int(round(index / float(rate) / vin.time_base))
                    index += 1
                    if t1 is not None and frame.time is not None and frame.time > t1 + 1.0:
                        pipe.put(frames_q, _END)  # past the window (with a second of packets
                        return                    # that muxers interleave late)
                    if not in_window(frame.time):
                        continue
                    if not pipe.put(frames_q, frame):
                        return
                continue
            when = float(packet.pts * packet.time_base) if packet.pts is not None else None
            if not packet.size or not in_window(when):
                continue
            d = shift[packet.stream.index]
            if d:
                packet.pts = packet.pts - d if packet.pts is not None else None
                packet.dts = packet.dts - d if packet.dts is not None else None
            packet.stream = copies[packet.stream.index]
            with mux_lock:
                out.mux(packet)
            counts["copied"] += 1
        pipe.put(frames_q, _END)

    def write():
        while True:
            item = pipe.get(encode_q)
            if item is _END:
                break
            for frame in item:
                with mux_lock:
                    out.mux(vout.encode(frame))
                counts["out"] += 1
        if not pipe.stop.is_set():
            packets = vout.encode(None)
            with mux_lock:
                out.mux(packets)

    bar = tqdm(total=total, desc="frames", unit="frame", file=sys.stderr, disable=not progress)
    readers = [pipe.thread(read), pipe.thread(write)]
    try:
        done = False
        while not done and not pipe.stop.is_set():
            group = []
            while len(group) < batch:
                item = pipe.get(frames_q)
                if item is _END:
                    done = True
                    break
                group.append(item)
            if group:
                frames = _upscale_frames(group, plan, shift[vin.index])
                if not pipe.put(encode_q, frames):
                    break
                bar.update(len(group))
        pipe.put(encode_q, _END)
    except BaseException:
        pipe.stop.set()
        raise
    finally:
        for t in readers:
            while t.is_alive():
                t.join(timeout=0.2)
                if pipe.errors:
                    pipe.stop.set()
        bar.close()
    if pipe.errors:
        exc = pipe.errors[0]
        if isinstance(exc, av.FFmpegError):
            raise UserError(f"video processing failed: {exc}") from exc
        raise exc
    if not counts["out"]:
        raise UserError("no video frames in the chosen --start/--duration window"
                        if start or duration else "the video stream has no frames")
    return {"frames": counts["out"], "copied_packets": counts["copied"],
            "size": (vout.width, vout.height), "rate": rate, "codec": vout.codec_context.name,
            "pix_fmt": plan.out_fmt}


def _upscale_frames(group, plan: _Plan, shift: int):
    """Decoded frames -> upscaled frames (pts, duration and colour tags carried over)."""
    oh, ow = plan.size
    work, bits = plan.work, plan.bits
    dtype = np.uint16 if bits > 8 else np.uint8
    results = []
    if plan.y_model:
        frames = [f if f.format.name == work.name else f.reformat(format=work.name) for f in group]
        luma = np.stack([plane_view(f.planes[0], dtype) for f in frames])[..., None]
        # 8-bit units: 10-bit luma 940 (white) is 235 * 4
        y_up = plan.tiler.upscale(luma, tile=plan.tile, maxval=255.0 * 2 ** (bits - 8))
        planes_out = [av.VideoFrame(ow, oh, work.name) for _ in frames]
        chroma = np.stack([np.stack([plane_view(f.planes[i], dtype) for i in (1, 2)]) for f in frames])
        ch, cw = planes_out[0].planes[1].height, planes_out[0].planes[1].width
        maxcode = float(2 ** bits - 1)
        c = torch.from_numpy(chroma.astype(np.float32) / maxcode)
        c = imresize(c, plan.net.scale, size=(ch, cw)).clamp_(0, 1).mul_(maxcode).round_()
        c = c.numpy().astype(dtype)
        for k, f in enumerate(planes_out):
            plane_view(f.planes[0], dtype)[:] = y_up[k, ..., 0]
            plane_view(f.planes[1], dtype)[:] = c[k, 0]
            plane_view(f.planes[2], dtype)[:] = c[k, 1]
            results.append(f)
    else:
        frames = group
        rgb = np.stack([f.to_ndarray(format=work.name) for f in frames])
        up = plan.tiler.upscale(rgb, tile=plan.tile)
        for k, f in enumerate(frames):
            o = av.VideoFrame.from_ndarray(up[k], format=work.name)
            o = o.reformat(format=plan.out_fmt, dst_colorspace=f.colorspace,
                           dst_color_range=f.color_range or None)
            results.append(o)
    for src, o in zip(group, results):
        o.pts = src.pts - shift if src.pts is not None else None
        o.time_base = src.time_base
        o.duration = src.duration
        for attr in ("color_primaries", "color_trc", "colorspace", "color_range"):
            try:
                setattr(o, attr, getattr(src, attr))
            except (AttributeError, ValueError, TypeError):
                pass
    return results


def _seconds(text: str | None, what: str) -> float | None:
    """Seconds from "12.5", "1:30" or "0:01:30.5"."""
    if text is None:
        return None
    try:
        value = 0.0
        for part in str(text).split(":"):
            value = value * 60 + float(part)
    except ValueError:
        raise UserError(f"{what} must be seconds or [h:]m:s, got {text!r}") from None
    if value < 0:
        raise UserError(f"{what} must be >= 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and not args.overwrite:
        raise UserError(f"{dst} exists; use --overwrite to replace it")
    if src.resolve() == dst.resolve():
        raise UserError("the output would replace the input; choose another -o")
    start, duration = _seconds(args.start, "--start"), _seconds(args.duration, "--duration")
    if duration is not None and duration <= 0:
        raise UserError("--duration must be > 0")
    batch = parse_count(args.batch, "--batch")
    tile_batch = parse_count(args.tile_batch, "--tile-batch")
    open_input(src).close()  # a clear error before a model is loaded
    up = make_upscaler(args.model, args.scale, backend=args.backend, device=args.device, half=args.half,
                       precision=args.precision, threads=args.threads)
    if not isinstance(up, BicubicUpscaler) and not float(up.scale).is_integer():
        raise UserError("video needs an integer scale")
    summary = upscale_video(src, dst, up, codec=args.codec, crf=args.crf, preset=args.preset,
                            pix_fmt=args.pix_fmt, start=start, duration=duration, batch=batch,
                            tile=args.tile, tile_batch=tile_batch,
                            max_memory=parse_size(args.max_memory) if args.max_memory else None,
                            progress=sys.stderr.isatty())
    w, h = summary["size"]
    print(f"wrote {dst}: {summary['frames']} frames {w}x{h} at {float(summary['rate']):.3f} fps "
          f"({summary['codec']}, {summary['pix_fmt']}), {summary['copied_packets']} packets copied, "
          f"{summary['batch']} frame(s) per model call")
    return 0


def register(sub) -> None:
    p = sub.add_parser("video", help="upscale a video; audio, subtitles and data copied as they are")
    p.add_argument("input", metavar="IN", help="input video file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output video file (.mp4, .mkv ...)")
    add_model_options(p)
    p.add_argument("--codec", default="libx264", help="video encoder: libx264, libx265, libsvtav1 ...")
    p.add_argument("--crf", type=int, default=None, help="encoder quality (lower is better)")
    p.add_argument("--preset", default=None, help="encoder speed preset (e.g. medium, slow; svtav1: 0-13)")
    p.add_argument("--pix-fmt", default=None, help="output pixel format (default: the input's)")
    p.add_argument("--start", default=None, help="clip start, seconds or [h:]m:s")
    p.add_argument("--duration", default=None, help="clip length, seconds or [h:]m:s")
    p.add_argument("--batch", default="auto",
                   help="frames per model call (default auto: 1 on the CPU; on a GPU the fastest of "
                        "1/2/4/8 that fits, timed on the first call)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)
