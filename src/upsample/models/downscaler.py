"""A learned downscaler trained jointly with an upscaler, with a codec stand-in between them.

`JointSR` holds two nets: `down`, a small CNN that makes the LR image from the HR one (bicubic
plus a learned residual, so an untrained net is exactly MATLAB bicubic), and `up`, an ESPCN-class
upscaler. Training runs HR -> down -> 8-bit rounding -> JPEG-like codec proxy -> up -> HR, so the
downscaler learns LR images that stay good after real compression (a downscaler trained without a
codec in the loop tends to lose its gain, or fall below bicubic, under JPEG).

The codec proxy (`jpeg_proxy`): 8x8 block DCT of the LR luma, division by the IJG luminance table
scaled to a JPEG quality drawn per sample from [q_min, q_max], rounding with a straight-through
gradient, de-quantization and inverse DCT. With probability `clean_prob` a sample sees only the
8-bit rounding (no codec).

`forward(x)` is the upscaler alone (LR -> HR, as every registered generator), so the model runs
in `upsample image/video/eval`, exports to ONNX and serves as the `up` of a codec-study pipeline;
`forward(hr, hr=True)` is the round trip that `upsample train` optimises (`trains_on_hr`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.degrade import imresize
from .espcn import ESPCN
from .state_keys import count_indices, shape

# ITU-T T.81 Annex K.1: the luminance quantization table (quality 50).
JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64)


def quant_table(quality: float) -> np.ndarray:
    """The IJG (libjpeg, Pillow) luminance table for a quality 1..100."""
    q = min(max(float(quality), 1.0), 100.0)
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    return np.clip(np.floor((JPEG_LUMA * scale + 50.0) / 100.0), 1, 255)


def dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (coefficients = D @ block @ D.T)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return torch.from_numpy(d)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def jpeg_proxy(y: torch.Tensor, quality: torch.Tensor, with_rate: bool = False):
    """Differentiable JPEG-like quantization of studio-range luma NCHW in [0, 1].

    `quality`: one JPEG quality per sample (N,). The luma goes to JPEG's full range, is cut into
    8x8 blocks from the top-left (padded by edge replication), DCT'd, quantized with the scaled IJG
    table (straight-through rounding) and transformed back. Runs in float32. With `with_rate` it
    also returns a differentiable rate proxy: the mean over coefficients of log2(1 + |c / Q|),
    roughly the bits per LR pixel that an entropy coder spends on them."""
    n, c, h, w = y.shape
    x = (y.float() * 255.0 - 16.0) * (255.0 / 219.0) - 128.0
    ph, pw = -h % 8, -w % 8
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    hb, wb = x.shape[-2] // 8, x.shape[-1] // 8
    blocks = x.reshape(n, c, hb, 8, wb, 8).transpose(3, 4)  # (n, c, hb, wb, 8, 8)
    d = dct_matrix().to(x.device, torch.float32)
    coef = d @ blocks @ d.T
    tables = torch.stack([torch.from_numpy(quant_table(float(q))) for q in quality.tolist()])
    tables = tables.to(x.device, torch.float32).view(n, 1, 1, 1, 8, 8)
    scaled = coef / tables
    coef = round_ste(scaled) * tables
    x = (d.T @ coef @ d).transpose(3, 4).reshape(n, c, hb * 8, wb * 8)[..., :h, :w]
    out = ((x + 128.0) * (219.0 / 255.0) + 16.0) / 255.0
    if with_rate:
        return out, torch.log2(1.0 + scaled.abs()).mean()
    return out


class LearnedDownscaler(nn.Module):
    """HR -> LR: MATLAB bicubic plus a residual from a small CNN (zero-initialised last layer).

    conv 3x3 at HR (hr_feat) -> pixel-unshuffle by the scale -> conv 3x3 (num_feat) x num_conv
    -> conv 3x3 to the image channels, added to imresize(x, 1/scale)."""

    def __init__(self, *, scale: int = 2, num_in_ch: int = 1, hr_feat: int = 16, num_feat: int = 32,
                 num_conv: int = 2):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(num_in_ch, hr_feat, 3, padding=1)
        layers: list[nn.Module] = []
        ch = hr_feat * scale * scale
        for _ in range(num_conv):
            layers += [nn.Conv2d(ch, num_feat, 3, padding=1), nn.ReLU(inplace=True)]
            ch = num_feat
        self.body = nn.Sequential(*layers)
        self.tail = nn.Conv2d(ch, num_in_ch, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) with H and W multiples of the scale."""
        with torch.autocast(x.device.type, enabled=False):
            base = imresize(x.float(), 1.0 / self.scale)
        feat = F.relu(self.head(x))
        feat = F.pixel_unshuffle(feat, self.scale)
        return base + self.tail(self.body(feat)).float()


class JointSR(nn.Module):
    """A learned downscaler and an ESPCN upscaler trained end to end through a codec proxy."""

    trains_on_hr = True  # `upsample train` feeds the HR patch and calls forward(hr, hr=True)

    def __init__(self, *, scale: int = 2, num_in_ch: int = 1, hr_feat: int = 16, down_feat: int = 32,
                 down_conv: int = 2, num_feat: int = 64, mid_feat: int = 32, q_min: int = 20,
                 q_max: int = 95, clean_prob: float = 0.2, rate_weight: float = 0.0):
        super().__init__()
        if not 1 <= q_min <= q_max <= 100:
            raise ValueError(f"need 1 <= q_min <= q_max <= 100, got {q_min}, {q_max}")
        if not 0.0 <= clean_prob <= 1.0:
            raise ValueError(f"clean_prob must be in [0, 1], got {clean_prob}")
        self.scale, self.q_min, self.q_max, self.clean_prob = scale, q_min, q_max, clean_prob
        self.rate_weight = rate_weight
        self.aux_loss: torch.Tensor | None = None  # rate_weight x rate proxy of the last training pass
        self.down = LearnedDownscaler(scale=scale, num_in_ch=num_in_ch, hr_feat=hr_feat,
                                      num_feat=down_feat, num_conv=down_conv)
        self.up = ESPCN(scale=scale, num_in_ch=num_in_ch, num_feat=num_feat, mid_feat=mid_feat)

    def downscale(self, hr: torch.Tensor) -> torch.Tensor:
        """HR -> LR in [0, 1], not yet rounded to 8 bits."""
        return self.down(hr).clamp(0.0, 1.0)

    def codec(self, lr: torch.Tensor) -> torch.Tensor:
        """8-bit rounding, then (training only) the JPEG proxy at a random quality per sample.
        With rate_weight > 0, training also sets `aux_loss` (added to the loss by `upsample
        train`): the rate proxy of every sample at its quality, so the downscaler learns LR
        images that are cheap to code, not only ones that survive coding."""
        self.aux_loss = None
        with torch.autocast(lr.device.type, enabled=False):
            lr = round_ste(lr.float() * 255.0) / 255.0
            if not self.training or (self.clean_prob >= 1.0 and not self.rate_weight):
                return lr
            n = lr.shape[0]
            quality = torch.randint(self.q_min, self.q_max + 1, (n,))
            coded, rate = jpeg_proxy(lr, quality, with_rate=True)
            if self.rate_weight:
                self.aux_loss = self.rate_weight * rate
            keep = (torch.rand(n) < self.clean_prob).to(lr.device).view(n, 1, 1, 1)
            return torch.where(keep, lr, coded)

    def forward(self, x: torch.Tensor, hr: bool = False) -> torch.Tensor:
        if hr:
            return self.up(self.codec(self.downscale(x)))
        return self.up(x)


# ------------------------------------------------------------------ recognising state dicts


def detect(state: dict[str, torch.Tensor]) -> dict | None:
    """JointSR's constructor keywords when `state` is one, else None."""
    keys = set(state)
    if not {"down.head.weight", "down.tail.weight", "up.first_part.0.weight"} <= keys:
        return None
    hr_feat, cin = shape(state, "down.head.weight")[:2]
    n_up = shape(state, "up.last_part.0.weight")[0]
    n_conv = count_indices(keys, r"^down\.body\.(\d+)\.weight$")
    return {"scale": math.isqrt(n_up // cin), "num_in_ch": cin, "hr_feat": hr_feat,
            "down_feat": shape(state, "down.tail.weight")[1] if n_conv else 32,
            "down_conv": n_conv,
            "num_feat": shape(state, "up.first_part.0.weight")[0],
            "mid_feat": shape(state, "up.first_part.2.weight")[0]}
