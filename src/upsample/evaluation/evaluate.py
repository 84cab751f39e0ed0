"""`upsample eval`: PSNR/SSIM on benchmark folders with the papers' protocol.

Per HR image: modcrop to a multiple of the scale, LR = MATLAB bicubic downscale rounded to uint8
(as the standard LR PNGs are), upscale, clamp and round to uint8, then measure on Y (or RGB)
with `crop_border` pixels cut at each side.
"""

from __future__ import annotations

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
from ..inference.upscaler import Upscaler
from ..inference.load import check_scale, load_upscaler


@torch.no_grad()
def evaluate_image(upscaler: Upscaler, hr: np.ndarray, scale: float, crop_border: int,
                   y_channel: bool, downscaler=None) -> tuple[float, float, np.ndarray]:
    """`downscaler` (see `inference.downscale`) makes the LR instead of `make_lr` (a learned one)."""
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


def evaluate_model(model: str, folders: list[str], *, scale=None, crop: int | None = None,
                   y_channel: bool = True, save_dir: str | None = None, lpips: bool = False,
                   lpips_weights: str | None = None, lpips_backbone: str | None = None,
                   backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                   threads: int | None = None, progress: bool = True,
                   allow_untrained: bool = False) -> dict:
    """The `eval` report of `model` on the HR `folders`: {"model", "scale", "y_channel",
    "crop_border", "datasets"}; `scale` None = the model's own, `crop` None = the scale rounded up."""
    scale = check_scale(scale) if scale is not None else None
    # full fp32 on CUDA too (cuDNN convolutions default to TF32, 10-bit mantissas)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    for folder in folders:  # fail fast, before loading a model
        list_images(folder)
    lpips_metric = None
    if lpips:  # unavailable without its two weight files: one line says which to pass
        from .lpips import load_lpips
        lpips_metric = load_lpips(lpips_weights, lpips_backbone)
    upscaler = load_upscaler(model, scale=scale, backend=backend, device=device,
                             precision=precision, threads=threads, allow_untrained=allow_untrained)
    scale = upscaler.scale
    crop = crop if crop is not None else int(math.ceil(scale))
    if crop < 0:
        raise UserError(f"--crop must be >= 0, got {crop}")
    if lpips_metric is not None:
        lpips_metric.to(upscaler.device)
    datasets = evaluate_folders(upscaler, folders, scale=scale, crop_border=crop,
                                y_channel=y_channel, save_dir=save_dir,
                                progress=progress, lpips=lpips_metric)
    return {"model": model, "scale": int(scale) if float(scale).is_integer() else scale,
            "y_channel": y_channel, "crop_border": crop, "datasets": datasets}


def format_report(report: dict, lpips: bool = False) -> str:
    """The `eval` report as a table, one row per dataset (an LPIPS column with `lpips`)."""
    datasets = report["datasets"]
    width = max(8, *(len(k) for k in datasets))
    lines = [f"model {report['model']}  scale x{report['scale']}  "
             f"{'Y' if report['y_channel'] else 'RGB'} channel, crop {report['crop_border']}",
             f"{'dataset':<{width}}  {'n':>4}  {'PSNR':>7}  {'SSIM':>6}" + (f"  {'LPIPS':>6}" if lpips else "")]
    for k, v in datasets.items():
        lines.append(f"{k:<{width}}  {v['n']:>4}  {v['psnr']:>7.2f}  {v['ssim']:>6.4f}"
                     + (f"  {v['lpips']:>6.4f}" if lpips else ""))
    return "\n".join(lines)
