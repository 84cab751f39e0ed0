"""Upscalers around an upscaler: a final resize to any factor (`--outscale`), half precision.

Apart from the image API (`api`) because the benchmark and video take them without images.
"""

from __future__ import annotations

import torch

from ..data.degrade import imresize, output_size
from ..errors import UserError
from .upscaler import BicubicUpscaler, ModelUpscaler, Upscaler
from ..runtime.kinds import Backend


class ResizedUpscaler(Upscaler):
    """A model followed by `degrade.imresize` to any final factor (`--outscale`)."""

    def __init__(self, inner: Upscaler, outscale: float):
        self.inner, self.scale = inner, float(outscale)
        self.name, self.device = f"{inner.name}+resize", inner.device
        self.model, self.backend = inner.model, inner.backend
        self.runtime, self.precision = inner.runtime, inner.precision  # what runs the network

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        size = (output_size(x.shape[-2], self.scale), output_size(x.shape[-1], self.scale))
        return imresize(y, self.scale / self.inner.scale, size=size)


def half_upscaler(up: Upscaler) -> Upscaler:
    """The torch network in half precision (fp16 on CUDA, bf16 on CPU, where fp16 is slow); the
    colour and resize edges stay float32. Bicubic is returned as is."""
    if isinstance(up, BicubicUpscaler):
        return up
    if not isinstance(up, ModelUpscaler) or up.backend != Backend.TORCH:
        raise UserError("--half works with the torch backend only")
    dtype = torch.float16 if up.device.type == "cuda" else torch.bfloat16
    net = up.model.to(dtype)

    def run_net(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(dtype)).float()

    half = ModelUpscaler(net, run_net, scale=up.scale, name=up.name, backend=Backend.TORCH, device=up.device)
    half.precision = "fp16" if dtype == torch.float16 else "bf16"  # not the class's fp32
    return half
