"""`upsample eval`: the command line of `evaluation.evaluate.evaluate_model`."""

from __future__ import annotations

import argparse
import json
import math

from ..errors import UserError
from .options import (add_max_pixels_option, add_overwrite_option, add_runtime_options, check_scale_text,
                      output_text, path_text)

# Written down here so that `eval --help` needs no torch; tests/test_startup.py checks them
# against evaluation.evaluate's PROTOCOLS and DEGRADES.
PROTOCOL_NAMES = ("papers", "catid")
DEGRADES = ("bicubic", "gaussian")


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: --json names a JSON file (not a folder, not an existing file of another
    kind - an input picture, a recipe); --save writes no picture into a --data folder, and
    replaces pictures saved before only with --overwrite."""
    from pathlib import Path
    from ..inference.batch import check_writable
    if args.json and args.json != "-":
        out = Path(args.json)
        what = ("a folder" if out.is_dir() or args.json.endswith(("/", "\\"))  # newdir/: a file "newdir" was written
                else "an existing file that is not JSON" if out.exists() and out.suffix.lower() != ".json" else "")
        if what:
            raise UserError(f"--json {args.json}: {what}; name a .json file")
        check_writable(out.parent, out, "--json")  # not after an hour of evaluation
    if args.per_image and not args.json:
        raise UserError("--per-image adds one row per image to the JSON: use it with --json (FILE)")
    if args.save:
        from ..evaluation.evaluate import dataset_names
        check_writable(Path(args.save), args.save, "--save")  # not after the first image's evaluation
        inputs = [(f, "data") for f in args.data] + [(f, "LR") for f in args.lr or []]
        for folder, name in zip(args.data, dataset_names(args.data)):
            target = (Path(args.save) / name).resolve()
            for given, what in inputs:
                data = Path(given).resolve()
                if target == data or data in target.parents or target in data.parents:
                    raise UserError(f"--save {args.save} would write into the {what} folder {given}; "
                                    "name another folder")
            if target.exists() and not target.is_dir():  # was the OSError of mkdir, after an image's work
                raise UserError(f"--save {args.save}: {target} is a file, where the pictures of --data {folder} "
                                "would go; name another --save folder, or move the file")
            held = next(target.iterdir(), None) if target.is_dir() else None
            if held is not None and not args.overwrite:  # not always pictures: a notes.txt of the user's
                raise UserError(f"{target} is not empty (it holds {held.name}); pass --overwrite to replace "
                                "the pictures saved before (other files are kept), or name another --save folder")


def json_text(report: dict) -> str:
    """The report as standard JSON: an infinite PSNR (an output identical to its HR) is null, as
    Python's `Infinity` is no JSON that jq, JavaScript or pandas' strict readers take."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, list) else v
    return json.dumps(finite(report), indent=2, allow_nan=False)


def positive_sigma(text: str) -> float:
    """An argparse type for --sigma: a finite number > 0 (inf and nan passed the loader's `> 0`)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a blur > 0 in HR pixels, e.g. 0.5, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    check_scale_text(args.scale)  # these said before the evaluation's imports
    if args.degrade == "gaussian" and args.sigma is None:
        raise UserError("--degrade gaussian needs --sigma S > 0 (the blur in HR pixels; catid's "
                        "evaluate.py used scale / 6)")
    if args.sigma is not None and args.degrade is None and not args.lr:
        raise UserError("--sigma is the blur of --degrade gaussian: add that, or leave --sigma out")
    from ..evaluation.evaluate import evaluate_model, format_report

    _check_outputs(args)
    report = evaluate_model(args.model, args.data, scale=args.scale, crop=args.crop,
                            y_channel=False if args.rgb else None, protocol=args.protocol,
                            degrade=args.degrade, sigma=args.sigma, lr_dirs=args.lr, save_dir=args.save,
                            per_image=args.per_image, lpips=args.lpips,
                            lpips_weights=args.lpips_weights, lpips_backbone=args.lpips_backbone,
                            backend=args.backend, device=args.device, precision=args.precision,
                            threads=args.threads, progress=True,
                            allow_untrained=args.allow_untrained)
    if args.json == "-":
        print(json_text(report))
        return 0
    print(format_report(report, lpips=args.lpips))
    if args.json:
        from ..media.imageio import atomic_output
        with atomic_output(args.json, suffix=".part.json") as tmp:
            tmp.write_text(json_text(report) + "\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM of a model on HR image folders (papers' or catid's protocol)")
    p.add_argument("--model", default="bicubic", type=path_text, help="bicubic, a registered model name, or a checkpoint")
    p.add_argument("--scale", default=None, help="upscaling factor (default: the model's own; bicubic "
                   "and the multi-scale vdsr need it: any positive number for bicubic)")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", type=path_text, help="HR image folders")
    p.add_argument("--json", metavar="FILE", nargs="?", const="-", type=path_text,  # "": was "not given"
                   help="--json alone: print the results as JSON instead of the table (as bench and "
                        "models do); --json FILE: print the table and write the JSON to FILE "
                        "(default: the table only); an infinite PSNR (output identical to the HR) is null")
    p.add_argument("--protocol", choices=PROTOCOL_NAMES, default="papers",
                   help="papers (default): modcrop, MATLAB bicubic LR, Y channel, crop = scale, Gaussian "
                        "SSIM; catid: his evaluate.py - Pillow bicubic LR (W // s, H // s), RGB in "
                        "[0, 1], crop 4, scikit-image SSIM; either reports the bicubic baseline of the same LR "
                        "beside the model")
    p.add_argument("--degrade", choices=DEGRADES, default=None,
                   help="how the LR is made: the protocol's bicubic (default) or gaussian (blur of "
                        "--sigma, then every s-th pixel)")
    p.add_argument("--lr", nargs="+", action="extend", metavar="DIR", type=path_text, default=None,
                   help="(default: none, the LR is made from each HR) the LR images given with the "
                        "dataset, one folder per --data in the same order (DIV2K's LR_bicubic/X2, "
                        "BasicSR's LRbicx2): NAME.png's LR is NAME.png, NAMEx2, NAME_x2, NAME_LR, NAME_LR2 "
                        "(or NAME_SRF_2_LR beside NAME_SRF_2_HR), each HR size / scale after the crop; "
                        "the model and bicubic run on it, the report says it was given")
    p.add_argument("--sigma", type=positive_sigma, default=None, help="--degrade gaussian: the blur in HR pixels (default: none; required with gaussian)")
    p.add_argument("--rgb", action="store_true", help="measure on RGB instead of the Y channel")
    p.add_argument("--crop", type=int, default=None,
                   help="border crop in pixels (default: the scale; catid: 4)")
    p.add_argument("--per-image", action="store_true", help="also one row per image in the JSON")
    add_overwrite_option(p, help="--save: replace pictures saved before (default: refuse)")
    p.add_argument("--save", metavar="DIR", type=output_text,
                   help="(default: none) also write the upscaled images here, and beside each "
                   "a side-by-side montage NAME_sbs.png (original | model | bicubic | input)")
    p.add_argument("--lpips", action="store_true",
                   help="also LPIPS v0.1 on RGB (lower is better); needs the two files below")
    p.add_argument("--lpips-weights", metavar="FILE",
                   help="LPIPS linear weights, alex.pth or vgg.pth of the lpips package (weights/v0.1/); "
                        "default: $UPSAMPLE_LPIPS_WEIGHTS")
    p.add_argument("--lpips-backbone", metavar="FILE",
                   help="torchvision's ImageNet weights of that backbone (alexnet-owt-7be5be79.pth or "
                        "vgg16-397923af.pth); default: $UPSAMPLE_LPIPS_BACKBONE")
    # fp32 by default: the numbers measure the model, not the machine's half-precision units
    add_runtime_options(p, precision="fp32")
    add_max_pixels_option(p)
    p.set_defaults(func=run)
