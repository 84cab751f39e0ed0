"""`upsample video IN -o OUT`: the command line of `inference.video.upscale_video`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from ..inference.sizes import parse_count
from .options import (add_model_options, add_output_option, add_overwrite_option,
                      memory_limit, path_text)


def _seconds(text: str | None, what: str, *, positive: bool = False) -> float | None:
    """Seconds from "12.5", "1:30" or "0:01:30.5" (minutes and seconds after a colon under 60)."""
    if text is None:
        return None
    parts = str(text).split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or len(numbers) > 3 or any(not 0 <= n < 60 for n in numbers[1:]) \
            or not 0 <= numbers[0] < float("inf"):  # also nan
        raise UserError(f"{what} must be seconds or [h:]m:s (minutes and seconds under 60), got {text!r}")
    value = 0.0
    for n in numbers:
        value = value * 60 + n
    if positive and value <= 0:
        raise UserError(f"{what} must be > 0, got {text!r}")
    return value


# the constant-quality scales of the encoders that have one (x264/x265 0-51; VP8/9, AV1 0-63)
CRF_RANGE = {"libx264": 51, "h264": 51, "libx265": 51, "hevc": 51, "libvpx-vp9": 63, "libvpx": 63,
             "libsvtav1": 63, "libaom-av1": 63}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow", "placebo")
# --preset: x264/x265 by name; SVT-AV1's preset and libvpx's cpu-used by number (lowest, highest)
PRESET_NUMBERS = {"libsvtav1": (0, 13), "libvpx-vp9": (0, 8), "libvpx": (0, 8)}


def _check_crf(crf: int | None, codec: str) -> None:
    if crf is None:
        return
    if codec not in CRF_RANGE:
        raise UserError(f"--crf: {codec} has no constant-quality scale; leave --crf out, or use "
                        "--codec libx264, libx265, libvpx-vp9 or libsvtav1")
    if not 0 <= crf <= CRF_RANGE[codec]:
        raise UserError(f"--crf {crf}: {codec} takes 0 (best) to {CRF_RANGE[codec]}")


def _check_preset(preset: str | None, codec: str) -> None:
    """A --preset the encoder takes, said before a model is loaded (the encoder refused a bad
    one only when opened: "Invalid argument")."""
    if preset is None:
        return
    if codec in ("libx264", "h264", "libx265", "hevc"):
        if preset not in X26X_PRESETS:
            raise UserError(f"--preset {preset}: {codec} takes {', '.join(X26X_PRESETS)}")
    elif codec in PRESET_NUMBERS:
        low, high = PRESET_NUMBERS[codec]
        if not (preset.lstrip("-").isdigit() and low <= int(preset) <= high):
            raise UserError(f"--preset {preset}: {codec} takes a number from {low} (slowest, best) "
                            f"to {high} (fastest)")
    else:
        raise UserError(f"--preset: {codec} has no speed presets; leave --preset out")


def _known_scale(model: str | None, scale: str | None) -> float | None:
    """The run's scale where it is known before a model loads: --scale, 2 for the default model
    and bicubic, a registered model's own; None for a checkpoint (its file says)."""
    from ..inference.load import check_scale
    from ..models.table import ROWS
    if scale is not None:
        return check_scale(scale)
    if model in (None, "bicubic"):
        return 2.0
    row = next((r for r in ROWS if r.name == model), None)
    return float(row.scale) if row is not None and row.scale else None


def run(args: argparse.Namespace) -> int:
    from .options import check_half, check_scale_text, said_stopped
    check_half(args)
    check_scale_text(args.scale)  # before torch and the model load
    _check_not_a_pipe(args.input)
    with said_stopped("video", args.output):
        summary = _upscale(args)
    _report(Path(args.output), summary)
    return 0


def _check_not_a_pipe(src: str) -> None:
    """`-` as IN (stdin from other tools): said as `image` says it, where it was "file not found:
    -" (-o -: `options.output_text`)."""
    if src == "-":
        raise UserError("input -: standard input is not read; save the video to a file and name that")


def _check_start(src: Path, start: float | None, text: str | None) -> None:
    """A --start at or past the end of the video, said before the model loads (it was said after
    auto's quality checks, ~45 s); a file whose length its header does not give is checked as its
    frames are read."""
    from ..media.video import video_length
    if not start:
        return
    length = video_length(src)
    if length is not None and start >= length:
        raise UserError(f"--start {text}: {src} is only {length:.2f} s long; no video frames from there "
                        "(give a --start before its end)")


def _upscale(args: argparse.Namespace):
    """The upscaled video written to -o; upscale_video's summary."""
    # imported here: `video --help` needs no torch, PyAV or OpenVINO
    from ..inference.api import make_upscaler
    from ..inference.batch import check_writable
    from ..inference.upscaler import BicubicUpscaler
    from ..inference.video import upscale_video
    from ..media.video import (check_frame_size, check_is_video, check_output, choose_encoding,
                               source_pix_fmt, source_size)

    src, dst = Path(args.input), Path(args.output)
    if src.resolve() == dst.resolve():
        raise UserError("the output would replace the input; choose another -o")
    check_output(dst, overwrite=args.overwrite)
    check_writable(dst.parent, dst)  # not after the model is loaded and the encoder opened
    start, duration = _seconds(args.start, "--start"), _seconds(args.duration, "--duration", positive=True)
    batch = parse_count(args.batch, "--batch")
    tile_batch = parse_count(args.tile_batch, "--tile-batch")
    max_memory = memory_limit(args.max_memory)  # before the model loads, as the counts above
    check_is_video(src)  # clear errors before a model is loaded
    _check_start(src, start, args.start)
    codec, pix_fmt, notes = choose_encoding(dst, source_pix_fmt(src), args.codec, args.pix_fmt)
    _check_crf(args.crf, codec)
    _check_preset(args.preset, codec)
    scale = _known_scale(args.model, args.scale)
    if scale is not None and float(scale).is_integer():  # an odd output side, before the model loads
        w, h = source_size(src)
        check_frame_size(codec, pix_fmt, w * int(scale), h * int(scale))
    up = make_upscaler(args.model, args.scale, backend=args.backend, device=args.device, half=args.half,
                       precision=args.precision, threads=args.threads,
                       allow_untrained=args.allow_untrained, fastest_default=True)
    if args.model is None:
        why = ("no shipped model is trained for this scale" if isinstance(up, BicubicUpscaler)
               else "the fastest shipped model at this scale")
        print(f"video: {up.name} x{up.scale:g} ({why}; --model picks another)", file=sys.stderr)
    if not isinstance(up, BicubicUpscaler) and not float(up.scale).is_integer():
        raise UserError("video needs an integer scale")
    for note in notes:  # after the model's refusals: a refusal stays one line
        print(f"note: {note}", file=sys.stderr)
    summary = upscale_video(src, dst, up, codec=codec, crf=args.crf, preset=args.preset,
                            pix_fmt=pix_fmt, start=start, duration=duration, batch=batch,
                            tile=args.tile, tile_batch=tile_batch,
                            max_memory=max_memory,
                            progress=True)
    return summary


def _report(dst: Path, summary: dict) -> None:
    if summary["damaged_packets"]:
        print(f"note: {summary['damaged_packets']} damaged packet(s) of the input could not be decoded "
              "or copied and were skipped (their frames or sound are missing)", file=sys.stderr)
    if summary.get("cut_short"):
        stopped, header = summary["cut_short"]
        print(f"note: the input's video stops at {stopped:.2f} s, but its header says {header:.2f} s: the "
              "file was cut short (an interrupted download, copy or recording); the output has the "
              f"{summary['frames']} frame(s) that are there", file=sys.stderr)
    if summary["repeated_times"]:
        print(f"note: {summary['repeated_times']} frame(s) of the input had the time of the frame before "
              "(or an earlier one) and were left out, as FFmpeg does", file=sys.stderr)
    if summary.get("filled_slots"):
        print(f"note: {summary['filled_slots']} frame(s) repeated where the input has none (a late start or "
              f"a gap): {dst.suffix} stores a frame at every step of its constant rate", file=sys.stderr)
    if summary.get("sound_early"):
        print(f"note: the sound starts {summary['sound_early']:.3f} s after the picture, and {dst.suffix} stores "
              "no start time: it plays that much early (a .mkv or .mp4 output keeps it in time)", file=sys.stderr)
    w, h = summary["size"]
    side = f", {summary['workers']} frames side by side" if summary.get("workers", 1) > 1 else ""
    print(f"wrote {dst}: {summary['frames']} frames {w}x{h} at {float(summary['rate']):.3f} fps "
          f"({summary['codec']}, {summary['pix_fmt']}), "
          f"{str(summary['copied_packets']) + ' packets copied' if summary['copied_packets'] else 'no other stream copied'}"
          f"{', re-encoded ' + ' and '.join(summary['reencoded']) if summary['reencoded'] else ''}, "
          f"{summary['batch']} frame(s) per model call{side}")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in summary["ms_per_frame"].items())
    print(f"{summary['fps']:.2f} frames/s end to end; ms a frame (stages overlap): {stages}",
          file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("video", help="upscale a video; audio, subtitles and data copied as they are")
    p.add_argument("input", metavar="IN", type=path_text, help="input video file")
    add_output_option(p, help="output video file (.mp4, .mkv, .mov, .webm ...)")
    add_model_options(p, default="the fastest shipped model for --scale that is at least 1 dB above "
                      "bicubic on the benchmarks, else bicubic")
    p.add_argument("--codec", default=None,
                   help="video encoder (default: by container and depth: libx264 for 8-bit and "
                        "libx265 Main 10 for 10-bit input in .mp4/.mkv/.mov; libvpx-vp9, or "
                        "libsvtav1 for 10-bit, in .webm; wmv2 in .wmv/.asf; README's 'Video output' has the "
                        "others); libx264 on 10-bit input writes 8-bit")
    p.add_argument("--crf", type=int, default=None,
                   help="encoder quality, lower is better (default: the encoder's; VP9: 32)")
    p.add_argument("--preset", default=None,
                   help="encoder speed preset (default: the encoder's; x264/x265: e.g. veryfast, "
                        "medium; svtav1: 0-13, default 10; libvpx: cpu-used 0-8, default 4)")
    p.add_argument("--pix-fmt", default=None,
                   help="output pixel format (default: the input's, or the nearest the encoder "
                        "takes; 8-bit yuv420p for --codec libx264 on a 10-bit input)")
    p.add_argument("--start", default=None, help="clip start, seconds or [h:]m:s (default: 0)")
    p.add_argument("--duration", default=None,
                   help="clip length, seconds or [h:]m:s (default: to the end)")
    p.add_argument("--batch", default="auto",
                   help="frames per model call (default auto: 1 on the CPU; on a GPU the fastest of "
                        "1/2/4/8 that fits, timed on the first call)")
    add_overwrite_option(p, help="replace an existing output (default: refuse)")
    p.set_defaults(func=run)
