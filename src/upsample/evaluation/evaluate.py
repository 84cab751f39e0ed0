"""`upsample eval`: PSNR/SSIM on benchmark folders with the papers' protocol.

Per HR image: modcrop to a multiple of the scale, LR = MATLAB bicubic downscale rounded to uint8
(as the standard LR PNGs are), upscale, clamp and round to uint8, then measure on Y (or RGB)
with `crop_border` pixels cut at each side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from ..data.colour import to_tensor, to_uint8
from ..data.degrade import make_lr, modcrop
from ..errors import UserError
from ..media.imageio import atomic_save, list_images, read_rgb
from ..cli.options import add_runtime_options
from ..inference.upscaler import Upscaler
from ..inference.load import check_scale, load_upscaler


@torch.no_grad()
def evaluate_image(upscaler: Upscaler, hr: np.ndarray, scale: float, crop_border: int,
                   y_channel: bool, downscaler=None) -> tuple[float, float, np.ndarray]:
    """`downscaler` (see `downscale.py`) makes the LR instead of `make_lr` (a learned one)."""
    hr = modcrop(hr, scale)
    lr = make_lr(hr, scale, upscaler.device) if downscaler is None else downscaler.lr(hr, upscaler.device)
    sr = upscaler(lr)
    if sr.shape[-2:] != hr.shape[:2]:
        raise UserError(f"{upscaler.name} produced {tuple(sr.shape[-2:])} for an HR of "
                        f"{hr.shape[:2]}: is --scale {scale} the model's scale?")
    out = to_uint8(sr)
    return (metrics.psnr(out, hr, crop_border=crop_border, y_channel=y_channel),
            metrics.ssim(out, hr, crop_border=crop_border, y_channel=y_channel), out)


def evaluate_folders(upscaler: Upscaler, folders: list[str], *, scale: float, crop_border: int,
                     y_channel: bool = True, save_dir: str | None = None, progress: bool = True,
                     lpips=None) -> dict:
    """{dataset name: {"psnr", "ssim", "n"}} averaged over each folder's images; with `lpips` (an
    `lpips.LPIPS`) also "lpips": on RGB, with the same border crop."""
    results = {}
    for folder in folders:
        images, skipped = list_images(folder)
        for s in skipped:
            print(f"note: skipping non-image file {s}", file=sys.stderr)
        if not images:
            raise UserError(f"no images in {folder}")
        name = Path(folder).resolve().name
        psnrs, ssims, lpipses = [], [], []
        for path in tqdm(images, desc=name, disable=not progress, leave=False, file=sys.stderr):
            hr = read_rgb(path)
            p, s, out = evaluate_image(upscaler, hr, scale, crop_border, y_channel)
            psnrs.append(p)
            ssims.append(s)
            if lpips is not None:
                lpipses.append(lpips_distance(lpips, out, modcrop(hr, scale), crop_border))
            if save_dir:
                from PIL import Image
                atomic_save(Image.fromarray(out), Path(save_dir) / name / (path.stem + ".png"))
        results[name] = {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "n": len(images)}
        if lpipses:
            results[name]["lpips"] = float(np.mean(lpipses))
    return results


@torch.no_grad()
def lpips_distance(metric, out: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """LPIPS between two uint8 RGB images of one size, `crop_border` pixels cut at each side."""
    c = crop_border
    a, b = (to_tensor(im[c:im.shape[0] - c, c:im.shape[1] - c], metric.shift.device) for im in (out, hr))
    return float(metric(a, b)[0])


def run(args: argparse.Namespace) -> int:
    scale = check_scale(args.scale)
    # full fp32 on CUDA too (cuDNN convolutions default to TF32, 10-bit mantissas)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    for folder in args.data:  # fail fast, before loading a model
        list_images(folder)
    lpips_metric = None
    if args.lpips:  # unavailable without its two weight files: one line says which to pass
        from .lpips import load_lpips
        lpips_metric = load_lpips(args.lpips_weights, args.lpips_backbone)
    upscaler = load_upscaler(args.model, scale=scale, backend=args.backend, device=args.device,
                             precision=args.precision, threads=args.threads)
    scale = upscaler.scale
    crop = args.crop if args.crop is not None else int(math.ceil(scale))
    if crop < 0:
        raise UserError(f"--crop must be >= 0, got {crop}")
    if lpips_metric is not None:
        lpips_metric.to(upscaler.device)
    datasets = evaluate_folders(upscaler, args.data, scale=scale, crop_border=crop,
                                y_channel=not args.rgb, save_dir=args.save,
                                progress=sys.stderr.isatty(), lpips=lpips_metric)
    report = {"model": args.model, "scale": int(scale) if float(scale).is_integer() else scale,
              "y_channel": not args.rgb, "crop_border": crop, "datasets": datasets}
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    width = max(8, *(len(k) for k in datasets))
    print(f"model {args.model}  scale x{report['scale']}  "
          f"{'Y' if not args.rgb else 'RGB'} channel, crop {crop}")
    lp = lpips_metric is not None
    print(f"{'dataset':<{width}}  {'n':>4}  {'PSNR':>7}  {'SSIM':>6}" + (f"  {'LPIPS':>6}" if lp else ""))
    for k, v in datasets.items():
        print(f"{k:<{width}}  {v['n']:>4}  {v['psnr']:>7.2f}  {v['ssim']:>6.4f}"
              + (f"  {v['lpips']:>6.4f}" if lp else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM of a model on HR image folders (papers' protocol)")
    p.add_argument("--model", default="bicubic", help="bicubic, a registered model name, or a checkpoint")
    p.add_argument("--scale", required=True, help="upscaling factor (any positive number for bicubic)")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="HR image folders")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' for stdout only)")
    p.add_argument("--rgb", action="store_true", help="measure on RGB instead of the Y channel")
    p.add_argument("--crop", type=int, default=None, help="border crop in pixels (default: the scale)")
    p.add_argument("--save", metavar="DIR", help="also write the upscaled images here")
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
    p.set_defaults(func=run)
