"""GAN discriminators with BasicSR parameter names, so BasicSR / Real-ESRGAN checkpoints load.

`VGGStyleDiscriminator`: ESRGAN's discriminator for 128x128 (or 256x256) crops: conv blocks that
halve the size five (six) times, BatchNorm, LeakyReLU 0.2, then two linear layers to one logit.
`UNetDiscriminatorSN`: Real-ESRGAN's U-Net discriminator with spectral normalisation, one logit
per pixel.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from .state_keys import shape


class VGGStyleDiscriminator(nn.Module):
    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128):
        super().__init__()
        if input_size not in (128, 256):
            raise ValueError(f"input_size must be 128 or 256, got {input_size}")
        self.input_size = input_size
        self.conv0_0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(num_feat, num_feat, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(num_feat, affine=True)
        widths = [num_feat, num_feat * 2, num_feat * 4, num_feat * 8, num_feat * 8]
        if input_size == 256:
            widths.append(num_feat * 8)
        self.levels = len(widths)
        for i in range(1, self.levels):  # level i: conv i_0 (3x3, width change), conv i_1 (4x4 stride 2)
            setattr(self, f"conv{i}_0", nn.Conv2d(widths[i - 1], widths[i], 3, 1, 1, bias=False))
            setattr(self, f"bn{i}_0", nn.BatchNorm2d(widths[i], affine=True))
            setattr(self, f"conv{i}_1", nn.Conv2d(widths[i], widths[i], 4, 2, 1, bias=False))
            setattr(self, f"bn{i}_1", nn.BatchNorm2d(widths[i], affine=True))
        self.linear1 = nn.Linear(num_feat * 8 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"input must be {self.input_size}x{self.input_size}, got {tuple(x.shape[-2:])}")
        feat = self.lrelu(self.conv0_0(x))
        feat = self.lrelu(self.bn0_1(self.conv0_1(feat)))
        for i in range(1, self.levels):
            feat = self.lrelu(getattr(self, f"bn{i}_0")(getattr(self, f"conv{i}_0")(feat)))
            feat = self.lrelu(getattr(self, f"bn{i}_1")(getattr(self, f"conv{i}_1")(feat)))
        return self.linear2(self.lrelu(self.linear1(feat.flatten(1))))


class UNetDiscriminatorSN(nn.Module):
    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.skip_connection = skip_connection
        # three stride-2 convs, then three x2 upsamplings added to the skips: sides must divide by 8
        self.size_multiple = 8 if skip_connection else 1
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x):
        def act(t):
            return F.leaky_relu(t, negative_slope=0.2)

        def up(t):
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        return self.conv9(act(self.conv8(act(self.conv7(x6)))))


# ------------------------------------------------------------------ recognising state dicts


def detect_vgg_style(state: dict[str, torch.Tensor]) -> dict | None:
    """VGGStyleDiscriminator's constructor keywords when `state` is one, else None."""
    keys = set(state)
    if not {"conv0_0.weight", "linear1.weight", "linear2.weight"} <= keys:
        return None
    feat, cin = shape(state, "conv0_0.weight")[:2]
    return {"num_in_ch": cin, "num_feat": feat, "input_size": 256 if "conv5_0.weight" in keys else 128}


def detect_unet_sn(state: dict[str, torch.Tensor]) -> dict | None:
    """UNetDiscriminatorSN's constructor keywords when `state` is one, else None."""
    # `weight_orig`: spectral_norm keeps the raw weight under that name
    if not {"conv0.weight", "conv1.weight_orig", "conv9.weight"} <= set(state):
        return None
    feat, cin = shape(state, "conv0.weight")[:2]
    return {"num_in_ch": cin, "num_feat": feat}
