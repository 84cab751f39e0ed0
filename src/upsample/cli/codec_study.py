"""`upsample codec-study`: the command line of `studies.codec_study` (a study, or --merge)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.kinds import BACKENDS
from .options import (add_max_pixels_option, add_output_option, add_overwrite_option, add_untrained_option,
                      count_or_all, path_text, thread_count_or_default)


def run(args: argparse.Namespace) -> int:
    from .options import said_stopped
    with said_stopped("codec-study", args.out, last=Path(args.out) / "summary.md"):
        results = _study(args)
    from ..studies.codec_study import bd_summary
    print(bd_summary(results, Path(args.out)))
    return 0


def _study(args: argparse.Namespace):
    from ..studies.codec_study import merge_studies, run_study
    # the inputs and -o are checked by the library, before any model loads
    if args.merge:
        results = merge_studies(args.inputs, args.out, vs=args.vs, title=args.title,
                                overwrite=args.overwrite)
    else:
        from ..inference.load import check_device
        check_device(args.device, args.backend)
        results = run_study(args.inputs, args.out, codecs=args.codecs, pipelines=args.pipeline,
                            scale=args.scale, ladders=args.ladder, max_images=args.max_images,
                            max_frames=args.max_frames, backend=args.backend, device=args.device,
                            threads=args.threads, title=args.title, vs=args.vs,
                            overwrite=args.overwrite, allow_untrained=args.allow_untrained)
    return results


def register(sub) -> None:
    from ..studies.codec import CODECS  # numpy only: no torch
    p = sub.add_parser("codec-study", help="rate-distortion of down-up (ML upscaling) vs full resolution "
                                           "in JPEG/WebP/AVIF and x264/x265/AV1, with BD-rate")
    p.add_argument("inputs", nargs="+", metavar="IN", type=path_text, help="image folders and/or video clips")
    add_output_option(p, dest="out", metavar="DIR", help="folder for summary.md, CSV/JSON, plots")
    p.add_argument("--codecs", nargs="+", default=[], metavar="CODEC",
                   help=f"any of {', '.join(CODECS)} (image codecs for folders, video codecs for clips; "
                        "no default: a study needs at least one, --merge none)")
    p.add_argument("--pipeline", action="append", metavar="[LABEL=]DOWN:UP",
                   help="a down-up pipeline (repeatable): DOWN = bicubic or a joint model "
                        "(joint-x2, or a checkpoint of one); UP = bicubic, a model or a checkpoint "
                        "(default: bicubic:bicubic)")
    p.add_argument("--scale", default="2", help="down-up factor (default 2)")
    p.add_argument("--ladder", action="append", metavar="CODEC=Q,Q,...",
                   help="rate points of a codec: qualities (images) or CRFs (video); default: "
                        + "; ".join(f"{c.name} {','.join(map(str, c.ladder))}" for c in CODECS.values()))
    p.add_argument("--max-images", type=count_or_all, default=0, help="use N images per folder, evenly spaced (default 0: all)")
    p.add_argument("--max-frames", type=count_or_all, default=0,
                   help="use the first N frames of each clip (default 0: all, if they fit in the free memory)")
    p.add_argument("--backend", default="torch", choices=BACKENDS, help="runtime of the model upscalers: torch "
                                                      "(default), auto (as `image` picks), onnxruntime or openvino")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=thread_count_or_default, default=0, help="torch threads and encoder threads (0: default)")
    p.add_argument("--title", default="", help="title of summary.md (default: none)")
    p.add_argument("--vs", action="append", metavar="TEST:ANCHOR",
                   help="also the BD-rate of pipeline TEST against pipeline ANCHOR (repeatable; default: none), e.g. "
                        "a learned downscaler against bicubic down with the same upscaler")
    p.add_argument("--merge", action="store_true",
                   help="IN are earlier -o folders (or their study.json): analyse their points "
                        "together, e.g. a folder split over several processes or machines")
    add_overwrite_option(p, help="replace the outputs of an earlier study in -o (default: refuse)")
    add_untrained_option(p)
    add_max_pixels_option(p)
    p.set_defaults(func=run)
