"""`upsample make-clip IMAGE -o CLIP`: the command line of `studies.clips.make_clip`."""

from __future__ import annotations

import argparse
import sys

from .options import add_max_pixels_option, add_output_option, add_overwrite_option, path_text


MOTIONS = ("pan", "zoom", "panzoom")  # studies.clips.MOTIONS (a test checks it): no torch for --help


def run(args: argparse.Namespace) -> int:
    from ..studies.clips import make_clip
    print(make_clip(args.image, args.output, size=args.size, seconds=args.seconds, fps=args.fps,
                    motion=args.motion, overwrite=args.overwrite), file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("make-clip", help="make a short test clip (pan/zoom) from a large still image")
    p.add_argument("image", type=path_text, help="source image, larger than --size (e.g. an Urban100 image)")
    add_output_option(p, metavar="CLIP", help=".mkv, .mp4 or .mov file")
    p.add_argument("--size", default="512x288", help="frame size WIDTHxHEIGHT, even (default 512x288)")
    p.add_argument("--seconds", type=float, default=3.0, help="duration (default 3)")
    p.add_argument("--fps", default="25", help="frame rate (default 25)")
    p.add_argument("--motion", default="pan", choices=MOTIONS, help="camera motion (default pan)")
    add_overwrite_option(p, help="replace an existing output (default: refuse)")
    add_max_pixels_option(p)
    p.set_defaults(func=run)
