"""Downscalers: the sender side of a down-up pipeline, HR RGB -> LR RGB.

`load_downscaler(spec, scale)` resolves "bicubic" (MATLAB imresize, as `data.degrade.make_lr`), a
registered joint model (`joint-x2`, see models/downscaler.py) or a checkpoint of one. A learned
downscaler works on Y like its upscaler: RGB -> YCbCr (BT.601), the network on Y, Cb/Cr by
`degrade.imresize`, back to RGB. `lr(hr, device)` returns the LR as an 8-bit image would hold it
(the input of a codec, or of an upscaler in `evaluate.evaluate_image`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.degrade import imresize, quantize
from ..errors import UserError
from .load import check_scale
from ..data.colour import rgb_to_ycbcr, ycbcr_to_rgb


class Downscaler:
    """HR float NCHW RGB in [0, 1] (H, W multiples of the scale) -> LR, unrounded."""

    name = "bicubic"
    scale = 2.0

    def __init__(self, scale: float, device: str | torch.device = "cpu"):
        self.scale, self.device = check_scale(scale), torch.device(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(x.double(), 1.0 / self.scale).to(x.dtype)

    def lr(self, hr: np.ndarray, device=None) -> torch.Tensor:
        """uint8 HWC HR -> float NCHW LR on the 8-bit grid (the LR a PNG or a codec receives)."""
        from ..data.degrade import make_lr
        return make_lr(hr, self.scale, device or self.device)  # bit for bit `upsample eval`'s LR


class LearnedDownscaler(Downscaler):
    """The `downscale` of a joint model (Y or RGB), as an RGB -> RGB downscaler."""

    def __init__(self, model: nn.Module, name: str, device: str | torch.device = "cpu"):
        if not hasattr(model, "downscale"):
            raise UserError(f"{name} has no learned downscaler; use bicubic or a joint model "
                            "(e.g. joint-x2, or a checkpoint trained from configs/joint-x2.toml)")
        self.model, self.name = model.eval().to(device), name
        self.scale, self.device = float(model.upsample_spec.scale), torch.device(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.model.upsample_spec.input == "rgb":
            return self.model.downscale(x)
        ycc = rgb_to_ycbcr(x)
        y = self.model.downscale(ycc[:, :1])
        chroma = imresize(ycc[:, 1:], 1.0 / self.scale, size=tuple(y.shape[-2:]))
        return ycbcr_to_rgb(torch.cat([y, chroma], 1))

    def lr(self, hr: np.ndarray, device=None) -> torch.Tensor:
        from ..data.colour import to_tensor
        return quantize(self(to_tensor(hr, self.device))).to(device or self.device)


def check_trained_downscaler(spec: str, allow_untrained: bool = False) -> None:
    """A registered joint model without trained weights is refused unless `allow_untrained`
    (or $UPSAMPLE_ALLOW_UNTRAINED=1), as `load.check_trained` refuses such an upscaler: its
    random downscaler would make the study's LR pictures."""
    from ..models import registry
    from .load import lacks_weights
    if not lacks_weights(spec, allow_untrained):
        return
    LearnedDownscaler(registry.create_model(spec), spec)  # a model with no downscaler says so first
    raise UserError(f"{spec} has no trained weights: give a checkpoint of it trained with `upsample "
                    "train` (e.g. from configs/joint-x2.toml), or use bicubic; --allow-untrained runs "
                    "its untrained weights, for timing only")


def load_downscaler(spec: str, *, scale: float, device: str = "cpu",
                    allow_untrained: bool = False) -> Downscaler:
    """"bicubic" at `scale`, or a joint model (registered name or checkpoint) of that scale; a
    registered one without trained weights only with `allow_untrained`."""
    if spec == "bicubic":
        return Downscaler(scale, device)
    check_trained_downscaler(spec, allow_untrained)
    from .load import resolve_model
    model, name = resolve_model(spec, takes_bicubic=True)  # (bicubic: a DOWN of its own)
    down = LearnedDownscaler(model, name, device)
    if abs(down.scale - check_scale(scale)) > 1e-9:
        raise UserError(f"{name} downscales by {down.scale:g}, but the scale is {scale}")
    return down
