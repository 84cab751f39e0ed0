"""ESPCN (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an Efficient
Sub-Pixel Convolutional Neural Network").

conv 5x5 (64) -> tanh -> conv 3x3 (32) -> tanh -> conv 3x3 (r^2 C) -> PixelShuffle(r), on the LR
image. The paper works on Y (C = 1); C = 3 gives an RGB variant. Parameter names follow the common
PyTorch port (`first_part.0/2`, `last_part.0`) so its state dicts load unchanged.
"""

from __future__ import annotations

from torch import nn


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
