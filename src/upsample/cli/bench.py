"""`upsample bench`: the command line of `evaluation.bench.bench`."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import UserError
from ..runtime.kinds import BACKENDS, PRECISIONS
from .options import (add_max_pixels_option, add_untrained_option, check_scale_text, path_text, positive_int,
                      thread_count)


def finite(value):
    """`value` with every NaN or infinite float made None: strict JSON readers (jq, browsers) refuse
    Python's NaN, which a row whose output overflowed (fp16 on CUDA) gives as its max|diff|."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def progress(message: str) -> None:
    """On stderr, with --json too (the JSON is stdout alone): a 4K frame of a large model takes minutes."""
    print(message, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.train and args.model:
        raise UserError("--train MODEL times training, --model MODEL inference; give one of them")
    if args.seconds is not None and not args.train:
        raise UserError("--seconds is the time of each loop of --train; inference takes --runs and --warmup")
    if args.overrides and not args.train:
        raise UserError("--set changes the recipe of --train; inference takes no recipe")
    if not args.model and not args.train:  # said before torch's import, not 20 s later
        if args.int8:  # `bench --int8 OUT`: the int8 file is timed beside the model it was made from
            raise UserError(f"--int8 {args.int8[0]} is timed beside the model it was quantized from: "
                            "give that one with --model (e.g. --model espcn-x2)")
        raise UserError("give --model MODEL (or --train MODEL to time training)")
    check_scale_text(args.scale)
    # imported here: `bench --help` and the refusals above need no torch
    from ..evaluation.bench import bench, format_report, parse_frame_size
    from ..training.bench import bench_train, format_train_report

    if args.train:
        report = bench_train(args.train, seconds=4.0 if args.seconds is None else args.seconds, device=args.device,
                             threads=args.threads, log=progress, overrides=args.overrides)
        print(json.dumps(finite(report), indent=2) if args.json else format_train_report(report))
        return 0
    size = parse_frame_size(args.size)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    try:
        report = bench(args.model, size=size, backends=backends, device=args.device, half=args.half,
                       warmup=args.warmup, runs=args.runs, scale=args.scale, int8=args.int8, log=progress,
                       image=args.image, precision=args.precision, threads=args.threads,
                       allow_untrained=args.allow_untrained, calib=args.calib)
    except (RuntimeError, MemoryError) as exc:  # the frames fit, the network's activations did not
        from ..inference.tiler import is_oom
        if isinstance(exc, RuntimeError) and not is_oom(exc):
            raise
        raise UserError(f"out of memory timing {args.model} at --size {args.size}: use a smaller --size") from None
    print(json.dumps(finite(report), indent=2) if args.json else format_report(report))
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench",
                       help="speed per backend: ms/frame, MP/s, GFLOP/s and share of peak; --train: training speed")
    p.add_argument("--model", default=None, type=path_text,
                   help="a registered name, a checkpoint, bicubic, or another project's ONNX graph (timed without the "
                        "eager torch row; no default: required unless --train)")
    p.add_argument("--train", default=None, metavar="MODEL",
                   help="time training instead: our trainer vs a plain reference loop on a recipe file, "
                        "or MODEL's recipe (configs/MODEL.toml here or in the source checkout, else a shipped "
                        "model's packaged recipe, as `upsample train MODEL` takes it; default: time inference)")
    p.add_argument("--seconds", type=float, default=None, help="--train: timed seconds per loop (default 4)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="--train: override a recipe value, e.g. --set 'data.train=[\"my/photos\"]' "
                        "(repeatable; default: none)")
    p.add_argument("--scale", default=None, help="scale (default: the model's own; bicubic and VDSR need one)")
    p.add_argument("--size", default="640x360", help="input frame WIDTHxHEIGHT (e.g. 1920x1080)")
    p.add_argument("--backend", default="all", choices=["all", *BACKENDS], help="the backends to time")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="precision of the auto row (auto: what `--backend auto` picks)")
    p.add_argument("--image", default=None, type=path_text,  # "": was random pixels, without a word
                   help="a picture to measure on, resized/cropped to --size (default: random pixels)")
    p.add_argument("--threads", type=thread_count, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, or an OpenVINO device (CPU, GPU, NPU, AUTO)")
    p.add_argument("--calib", default=None, metavar="DIR", type=path_text,
                   help="(default: none) make (once, into the cache) the int8 model that the auto row lets compete, "
                        "calibrated on these training images")
    add_untrained_option(p)
    p.add_argument("--half", action="store_true", help="also torch in fp16 (CUDA) / bf16 (CPU)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--runs", type=positive_int, default=3, help="timed runs (the median is reported)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--int8", action="append", default=[], metavar="FILE", type=path_text,
                   help="also time this `upsample quantize` output of the model (repeatable; default: none)")
    add_max_pixels_option(p)
    p.set_defaults(func=run)
