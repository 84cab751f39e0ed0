"""RRDBNet, the ESRGAN generator (Wang et al. 2018), with BasicSR parameter names.

conv_first -> 23 RRDB blocks (3 residual dense blocks each: 5 convs, growth 32, LeakyReLU 0.2,
residuals scaled by 0.2) -> conv_body, global residual -> nearest x2 + conv_up1 -> nearest x2 +
conv_up2 -> conv_hr -> conv_last. As in Real-ESRGAN, scale 2 and 1 first pixel-unshuffle the input
by 2 and 4 (so H and W must be multiples of 2 or 4), then run the x4 network. Scale 3 uses one
nearest x3 + conv_up1 and has no conv_up2.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def scaled_kaiming_(modules, scale: float = 0.1) -> None:
    """BasicSR's `default_init_weights`: Kaiming normal, multiplied by `scale`, zero bias."""
    for m in modules:
        nn.init.kaiming_normal_(m.weight)
        m.weight.mul_(scale)
        if m.bias is not None:
            m.bias.zero_()


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        for i in range(1, 6):
            cin = num_feat + (i - 1) * num_grow_ch
            setattr(self, f"conv{i}", nn.Conv2d(cin, num_grow_ch if i < 5 else num_feat, 3, 1, 1))
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        scaled_kaiming_([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, *, scale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 3, 4):
            raise ValueError(f"RRDBNet supports scales 1, 2, 3 and 4, got {scale}")
        self.scale = scale
        self.unshuffle = {1: 4, 2: 2}.get(scale, 1)
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        if scale != 3:
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        if self.scale == 3:
            feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=3, mode="nearest")))
        else:
            feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
            feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))
