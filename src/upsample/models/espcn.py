"""ESPCN (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an Efficient
Sub-Pixel Convolutional Neural Network").

conv 5x5 (64) -> tanh -> conv 3x3 (32) -> tanh -> conv 3x3 (r^2 C) -> PixelShuffle(r), on the LR
image. The paper works on Y (C = 1); C = 3 gives an RGB variant. Parameter names follow the common
PyTorch port (`first_part.0/2`, `last_part.0`) so its state dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from .state_keys import rename_keys, shape


class ESPCN(nn.Module):
    def __init__(self, *, scale: int = 3, num_in_ch: int = 1, num_feat: int = 64, mid_feat: int = 32):
        super().__init__()
        self.scale = scale
        self.first_part = nn.Sequential(
            nn.Conv2d(num_in_ch, num_feat, 5, padding=2), nn.Tanh(),
            nn.Conv2d(num_feat, mid_feat, 3, padding=1), nn.Tanh())
        self.last_part = nn.Sequential(
            nn.Conv2d(mid_feat, num_in_ch * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x):
        return self.last_part(self.first_part(x))

    def phases(self, x):
        """The output before the pixel shuffle, (N, C * scale^2, H, W): a graph that adds to the
        picture (`runtime.auto.FusedRGB`'s chroma) can add there, at low resolution."""
        return self.last_part[0](self.first_part(x))


def detect(state: dict[str, torch.Tensor]) -> dict | None:
    """ESPCN's constructor keywords when `state` is one, else None. UserError when the output
    channels are no square multiple of the input channels."""
    if not {"first_part.0.weight", "first_part.2.weight", "last_part.0.weight"} <= set(state):
        return None
    feat, cin = shape(state, "first_part.0.weight")[:2]
    n = shape(state, "last_part.0.weight")[0]
    scale = math.isqrt(n // cin)
    if scale * scale * cin != n:
        raise UserError(f"ESPCN with {n} output channels for {cin} input channels "
                        "is not a square scale")
    return {"scale": scale, "num_in_ch": cin, "num_feat": feat,
            "mid_feat": shape(state, "first_part.2.weight")[0]}


# Lornatang's ESPCN-PyTorch names (`feature_maps.0/2`, `sub_pixel.0`): the same layers.
_LORNATANG_RULES = [(r"^feature_maps\.", "first_part."), (r"^sub_pixel\.", "last_part.")]


def rename_foreign(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`state` in our names when it is in Lornatang's ESPCN names, else None."""
    if {"feature_maps.0.weight", "feature_maps.2.weight", "sub_pixel.0.weight"} <= set(state):
        return rename_keys(state, _LORNATANG_RULES)
    return None
