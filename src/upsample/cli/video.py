"""`upsample video IN -o OUT`: the command line of `inference.video.upscale_video`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from ..inference.api import make_upscaler
from ..inference.sizes import parse_count, parse_size
from ..inference.upscaler import BicubicUpscaler
from ..inference.video import upscale_video
from ..media.video import check_is_video, check_output
from .options import add_model_options


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
    check_output(dst, overwrite=args.overwrite)
    if src.resolve() == dst.resolve():
        raise UserError("the output would replace the input; choose another -o")
    start, duration = _seconds(args.start, "--start"), _seconds(args.duration, "--duration")
    if duration is not None and duration <= 0:
        raise UserError("--duration must be > 0")
    batch = parse_count(args.batch, "--batch")
    tile_batch = parse_count(args.tile_batch, "--tile-batch")
    check_is_video(src)  # a clear error before a model is loaded
    up = make_upscaler(args.model, args.scale, backend=args.backend, device=args.device, half=args.half,
                       precision=args.precision, threads=args.threads,
                       allow_untrained=args.allow_untrained, fastest_default=True)
    if args.model is None:
        print(f"video: {up.name} x{up.scale:g} (the fastest shipped model at this scale; --model "
              "picks another)", file=sys.stderr)
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
    add_model_options(p, default="the fastest shipped model for --scale that is at least 1 dB above "
                      "bicubic on the benchmarks, else bicubic")
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
