"""Validation during training, measured exactly as `upsample eval` measures (Y PSNR/SSIM,
border = scale): its own module because it is the one place training reads evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..data.degrade import modcrop
from ..evaluation import evaluate, metrics
from ..inference.upscaler import BicubicUpscaler, ModelUpscaler
from ..media.imageio import read_rgb
from . import config as config_mod
from ..runtime.kinds import Backend


def load_val_images(files: list, cfg: config_mod.ValConfig, scales=()) -> list[np.ndarray]:
    """The first val.max_images (0: all) of `files`, centre-cropped to val.crop (0: whole); a
    UserError naming an image too small to be measured at one of `scales` (found before the run
    dir is claimed, not at the first validation)."""
    files = files[:cfg.max_images] if cfg.max_images else files
    images = []
    for f in files:
        whole = read_rgb(f)
        images.append(img := center_crop(whole, cfg.crop))
        cropped = img.shape != whole.shape  # val.crop made it smaller: raising it helps
        for s in scales:  # as `validate` measures it: modcrop, then a border of the scale
            border = int(math.ceil(s))
            if not evaluate.ssim_fits(modcrop(img, s).shape, border):
                h, w = img.shape[:2]
                raise UserError(
                    f"validation image {f} is {w}x{h}{' after val.crop' if cropped else ''}: too small to "
                    f"measure at x{s} (SSIM's {metrics.SSIM_SIDE['gaussian']}-pixel window inside a {border}-pixel "
                    "border); leave it out of the validation images (data.val_list, or the data.val_fraction "
                    "split)" + (" or raise val.crop" if cropped else ""))
    return images


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return img
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y:y + size, x:x + size]


@torch.no_grad()
def validate(model: nn.Module | None, images: list[np.ndarray], scales: list[int], device) -> dict:
    """Mean PSNR/SSIM (Y, border = scale) over images and scales, exactly as `upsample eval`.
    With model None it measures bicubic, the baseline every validation is read against."""
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    psnrs, ssims, samples = [], [], []
    for s in scales:
        up = (BicubicUpscaler(s, device) if model is None else
              ModelUpscaler(model, model, scale=s, name="validation", backend=Backend.TORCH, device=device))
        down = None
        if getattr(model, "trains_on_hr", False):  # a joint model makes its own LR
            from ..inference.downscale import LearnedDownscaler
            down = LearnedDownscaler(model, "validation", device)
        for hr in images:
            p, q, out = evaluate.evaluate_image(up, hr, s, int(math.ceil(s)), True, downscaler=down)
            psnrs.append(p)
            ssims.append(q)
            samples.append(out)
    if model is not None:
        model.train(was_training)
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "samples": samples}
